//! `--constraint`: node features a job's nodes must have, in Slurm's syntax.
//!
//! - `a`, `a&b` (AND), `a|b` (OR), `(a&b)|c`: a test every node of the job must pass.
//!   Slurm evaluates `&` and `|` left to right without precedence, and so does this.
//! - `a*N`: at least N of the job's nodes have `a` (the other nodes need not).
//! - `[a|b|c]` (matching OR): every node has the same one of the alternatives.
//! - `[a*2&b*4]` (multiple counts): exactly that many nodes of each kind.
//!
//! Only one bracket is allowed, and only at the top level, as in Slurm. The per-node test is
//! the [`crate::filter::FeatureFilter`]; counts and matching OR are choices among the nodes
//! that pass it ([`Constraint::choose`], called by the pipeline).

use std::fmt;

/// A parsed `--constraint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// The text as given (what `scontrol show job` prints as `Features=`).
    pub text: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Every node passes `expr`; `counts` (from `a*N` terms) must hold among them.
    Plain {
        expr: Expr,
        counts: Vec<(Expr, u32)>,
    },
    /// `[a|b|…]`: every node passes the same alternative.
    MatchingOr(Vec<Expr>),
    /// `[a*2&b*4]`: that many nodes pass each part.
    Counts(Vec<(Expr, u32)>),
}

/// A boolean test over one node's features.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Feature(String),
    /// Always true: a counted term (`a*2`) in a per-node test.
    True,
    /// Left-to-right chain: `first op1 second op2 third…`.
    Chain(Box<Expr>, Vec<(Op, Expr)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    And,
    Or,
}

/// Why a constraint does not parse (Slurm answers all of these with "Invalid feature
/// specification").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstraintError(pub String);

impl fmt::Display for ConstraintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Invalid feature specification ({})", self.0)
    }
}

/// Most characters a constraint may have (a bound on parse work).
const TEXT_MAX: usize = 4096;

impl Constraint {
    /// Parses `text`; surrounding quotes (`"h100"`, `'a|b'`) are dropped, as the shell
    /// would in a directive.
    ///
    /// # Errors
    /// [`ConstraintError`] for empty parts, dangling operators, unbalanced brackets or
    /// parentheses, a bad count, a bracket not at the top level or a second bracket.
    pub fn parse(text: &str) -> Result<Constraint, ConstraintError> {
        let bare = strip_quotes(text.trim());
        if bare.is_empty() {
            return Err(ConstraintError("empty".into()));
        }
        if bare.len() > TEXT_MAX {
            return Err(ConstraintError(format!(
                "longer than {TEXT_MAX} characters"
            )));
        }
        let mut p = Parser {
            chars: bare.chars().collect(),
            pos: 0,
        };
        let kind = p.top()?;
        Ok(Constraint {
            text: bare.to_string(),
            kind,
        })
    }

    /// Every feature name the constraint mentions (for the submit-time check that each
    /// exists on some node).
    pub fn features(&self) -> Vec<&str> {
        let mut out = Vec::new();
        match &self.kind {
            Kind::Plain { expr, counts } => {
                expr.names(&mut out);
                counts.iter().for_each(|(e, _)| e.names(&mut out));
            }
            Kind::MatchingOr(alts) => alts.iter().for_each(|e| e.names(&mut out)),
            Kind::Counts(parts) => parts.iter().for_each(|(e, _)| e.names(&mut out)),
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether a node with `features` may be one of the job's nodes at all.
    pub fn node_passes(&self, features: &[String]) -> bool {
        match &self.kind {
            Kind::Plain { expr, .. } => expr.eval(features),
            Kind::MatchingOr(alts) => alts.iter().any(|e| e.eval(features)),
            Kind::Counts(parts) => parts.iter().any(|(e, _)| e.eval(features)),
        }
    }

    /// The least node count the constraint itself implies (`[a*2&b*4]` needs 6).
    pub fn nodes_min(&self) -> u32 {
        match &self.kind {
            Kind::Plain { counts, .. } => counts.iter().map(|c| c.1).max().unwrap_or(1),
            Kind::MatchingOr(_) => 1,
            Kind::Counts(parts) => parts.iter().map(|c| c.1).sum(),
        }
    }

    /// Chooses `wanted` of `candidates` (already ranked best first; each is its features)
    /// so that the counts and the matching OR hold, preferring earlier candidates.
    /// Returns the chosen positions in `candidates`, best first; `None` when no choice
    /// satisfies the constraint.
    pub fn choose(&self, candidates: &[&[String]], wanted: usize) -> Option<Vec<usize>> {
        match &self.kind {
            Kind::Plain { counts, .. } => choose_counts(candidates, counts, wanted),
            Kind::MatchingOr(alts) => alts.iter().find_map(|alt| {
                let fit: Vec<usize> = (0..candidates.len())
                    .filter(|&i| alt.eval(candidates[i]))
                    .take(wanted)
                    .collect();
                (fit.len() == wanted).then_some(fit)
            }),
            Kind::Counts(parts) => {
                let total: u32 = parts.iter().map(|p| p.1).sum();
                if total as usize != wanted {
                    return None;
                }
                choose_counts(candidates, parts, wanted)
            }
        }
    }

    /// Whether placement must go through [`Constraint::choose`] (counts or matching OR);
    /// otherwise the per-node test is all there is.
    pub fn needs_choice(&self) -> bool {
        !matches!(&self.kind, Kind::Plain { counts, .. } if counts.is_empty())
    }
}

/// Greedy: each count takes the best candidates that pass its part and are not taken yet,
/// the rest of `wanted` comes from the best remaining candidates.
fn choose_counts(
    candidates: &[&[String]],
    counts: &[(Expr, u32)],
    wanted: usize,
) -> Option<Vec<usize>> {
    let mut taken = vec![false; candidates.len()];
    let mut out = Vec::new();
    for (expr, n) in counts {
        let mut got = 0;
        for i in 0..candidates.len() {
            if got == *n {
                break;
            }
            if !taken[i] && expr.eval(candidates[i]) {
                taken[i] = true;
                out.push(i);
                got += 1;
            }
        }
        if got < *n {
            return None;
        }
    }
    for (i, t) in taken.iter_mut().enumerate() {
        if out.len() >= wanted {
            break;
        }
        if !*t {
            *t = true;
            out.push(i);
        }
    }
    if out.len() != wanted {
        return None;
    }
    out.sort_unstable();
    Some(out)
}

fn strip_quotes(s: &str) -> &str {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return &s[1..s.len() - 1];
        }
    }
    s
}

impl Expr {
    fn eval(&self, features: &[String]) -> bool {
        match self {
            Expr::Feature(f) => features.iter().any(|x| x == f),
            Expr::True => true,
            Expr::Chain(first, rest) => {
                let mut v = first.eval(features);
                for (op, e) in rest {
                    v = match op {
                        Op::And => v && e.eval(features),
                        Op::Or => v || e.eval(features),
                    };
                }
                v
            }
        }
    }

    fn names<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Expr::Feature(f) => out.push(f),
            Expr::True => {}
            Expr::Chain(first, rest) => {
                first.names(out);
                rest.iter().for_each(|(_, e)| e.names(out));
            }
        }
    }
}

/// Recursive descent over the characters of one constraint.
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn err<T>(&self, what: &str) -> Result<T, ConstraintError> {
        Err(ConstraintError(format!(
            "{what} at character {}",
            self.pos + 1
        )))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// The whole constraint: a plain chain, or one bracket alone.
    fn top(&mut self) -> Result<Kind, ConstraintError> {
        if self.peek() == Some('[') {
            self.pos += 1;
            let kind = self.bracket()?;
            if self.peek().is_some() {
                return self.err("text after the bracket");
            }
            return Ok(kind);
        }
        let mut counts = Vec::new();
        let expr = self.chain(&mut counts, false)?;
        if let Some(c) = self.peek() {
            return self.err(&format!("unexpected '{c}'"));
        }
        Ok(Kind::Plain { expr, counts })
    }

    /// `[t|t|…]` or `[t*N&t*N…]`, after the `[`.
    fn bracket(&mut self) -> Result<Kind, ConstraintError> {
        let mut parts: Vec<(Expr, Option<u32>)> = Vec::new();
        let mut ops = Vec::new();
        loop {
            let term = self.term(true)?;
            parts.push(term);
            match self.peek() {
                Some(']') => {
                    self.pos += 1;
                    break;
                }
                Some('|') => ops.push(Op::Or),
                Some('&') => ops.push(Op::And),
                Some(c) => return self.err(&format!("unexpected '{c}' in brackets")),
                None => return self.err("unclosed '['"),
            }
            self.pos += 1;
        }
        if ops.iter().all(|o| *o == Op::Or) && parts.iter().all(|p| p.1.is_none()) {
            return Ok(Kind::MatchingOr(parts.into_iter().map(|p| p.0).collect()));
        }
        if ops.iter().all(|o| *o == Op::And) && parts.iter().all(|p| p.1.is_some()) {
            let counted = parts
                .into_iter()
                .map(|(e, n)| (e, n.unwrap_or(1)))
                .collect();
            return Ok(Kind::Counts(counted));
        }
        self.err("brackets take either a matching OR (a|b) or counts joined by & (a*2&b*1)")
    }

    /// `term (op term)*` up to a `)` (when `nested`) or the end; counted terms go to
    /// `counts` and count as true in the per-node test.
    fn chain(
        &mut self,
        counts: &mut Vec<(Expr, u32)>,
        nested: bool,
    ) -> Result<Expr, ConstraintError> {
        let mut counted = |(expr, count): (Expr, Option<u32>)| match count {
            Some(n) => {
                counts.push((expr, n));
                Expr::True
            }
            None => expr,
        };
        let first = counted(self.term(false)?);
        let mut rest = Vec::new();
        loop {
            let op = match self.peek() {
                Some('&') => Op::And,
                Some('|') => Op::Or,
                Some(')') if nested => break,
                None => break,
                Some(c) => return self.err(&format!("unexpected '{c}'")),
            };
            self.pos += 1;
            rest.push((op, counted(self.term(false)?)));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Expr::Chain(Box::new(first), rest)
        })
    }

    /// A name or a parenthesised chain, with an optional `*N`.
    fn term(&mut self, in_bracket: bool) -> Result<(Expr, Option<u32>), ConstraintError> {
        let expr = match self.peek() {
            Some('(') => {
                self.pos += 1;
                let mut inner = Vec::new();
                let e = self.chain(&mut inner, true)?;
                if !inner.is_empty() {
                    return self.err("counts inside parentheses");
                }
                if self.peek() != Some(')') {
                    return self.err("unclosed '('");
                }
                self.pos += 1;
                e
            }
            Some('[') if in_bracket => return self.err("nested brackets"),
            Some('[') => return self.err("a bracket must hold the whole constraint"),
            _ => Expr::Feature(self.name()?),
        };
        if self.peek() != Some('*') {
            return Ok((expr, None));
        }
        self.pos += 1;
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits: String = self.chars[start..self.pos].iter().collect();
        match digits.parse::<u32>() {
            Ok(n) if n > 0 => Ok((expr, Some(n))),
            _ => self.err("a count after '*' must be a number above 0"),
        }
    }

    fn name(&mut self) -> Result<String, ConstraintError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '='))
        {
            self.pos += 1;
        }
        if self.pos == start {
            return match self.peek() {
                None => self.err("missing feature name"),
                Some(c) => self.err(&format!("missing feature name before '{c}'")),
            };
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }
}

/// Whether `name` is a valid feature name for a cluster description (what a constraint
/// can name).
pub fn valid_feature_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_and_tests_nodes() {
        // (constraint, node features, passes)
        let cases: &[(&str, &[&str], bool)] = &[
            ("h100", &["h100", "ib"], true),
            ("h100", &["a100"], false),
            ("h100&ib", &["h100", "ib"], true),
            ("h100&ib", &["h100"], false),
            ("h100|a100", &["a100"], true),
            ("\"h100|a100\"", &["a100"], true),
            ("'h100'", &["h100"], true),
            // Left to right: (a|b)&c.
            ("a|b&c", &["a"], false),
            ("a|b&c", &["a", "c"], true),
            ("a|(b&c)", &["a"], true),
            ("(a&b)|c", &["c"], true),
            ("[rack1|rack2]", &["rack2"], true),
            ("[rack1|rack2]", &["rack3"], false),
            ("gpu*2", &["cpu"], true),
            ("gpu*2&ib", &["cpu"], false),
            ("[a*2&b*1]", &["b"], true),
            ("[a*2&b*1]", &["c"], false),
        ];
        for (i, (text, feats, want)) in cases.iter().enumerate() {
            let c = Constraint::parse(text).unwrap_or_else(|e| panic!("#{i} {text}: {e}"));
            let got = c.node_passes(&f(feats));
            if got != *want {
                panic!("#{i} {text} on {feats:?}: want {want}, got {got}");
            }
        }
    }

    #[test]
    fn refuses_malformed() {
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("a&", "missing feature name at character 3"),
            ("&a", "missing feature name before '&'"),
            ("a||b", "missing feature name before '|'"),
            ("a*0", "count after '*'"),
            ("a*", "count after '*'"),
            ("a*x", "count after '*'"),
            ("(a&b", "unclosed '('"),
            ("a)", "unexpected ')'"),
            ("[a|b", "unclosed '['"),
            ("[a|b]c", "text after the bracket"),
            ("a&[b|c]", "a bracket must hold the whole constraint"),
            ("[a|b*2]", "brackets take either"),
            ("[a&b]", "brackets take either"),
            ("[[a]]", "nested brackets"),
            ("((a*2))", "counts inside parentheses"),
            ("a b", "unexpected ' '"),
            ("a,b", "unexpected ','"),
        ];
        for (i, (text, want)) in bad.iter().enumerate() {
            match Constraint::parse(text) {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i} {text:?}: want error with {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn chooses_counts_and_matching_or() {
        let nodes = [
            f(&["rack1", "a"]),
            f(&["rack2", "b"]),
            f(&["rack2", "a"]),
            f(&["rack1", "b"]),
            f(&["rack2", "b"]),
        ];
        let refs: Vec<&[String]> = nodes.iter().map(|v| v.as_slice()).collect();
        // (constraint, wanted, chosen positions)
        let cases: &[(&str, usize, Option<&[usize]>)] = &[
            ("[rack1|rack2]", 2, Some(&[0, 3])),
            ("[rack1|rack2]", 3, Some(&[1, 2, 4])),
            ("[rack1|rack2]", 4, None),
            ("[a*2&b*1]", 3, Some(&[0, 1, 2])),
            ("[a*2&b*1]", 4, None),
            ("[a*3&b*1]", 4, None),
            ("b*3", 4, Some(&[0, 1, 3, 4])),
            ("b*4", 4, None),
        ];
        for (i, (text, wanted, want)) in cases.iter().enumerate() {
            let c = Constraint::parse(text).expect("parses");
            let got = c.choose(&refs, *wanted);
            if got.as_deref() != *want {
                panic!("#{i} {text} x{wanted}: want {want:?}, got {got:?}");
            }
        }
        assert_eq!(Constraint::parse("[a*2&b*4]").map(|c| c.nodes_min()), Ok(6));
        let names = Constraint::parse("(h100&ib)|a100*2").expect("parses");
        assert_eq!(names.features(), ["a100", "h100", "ib"]);
    }
}
