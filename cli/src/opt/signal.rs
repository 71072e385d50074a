//! `--signal=[B:]SIG[@SECS]`: what a job gets first when it is stopped early (preemption)
//! and how long before SIGKILL.

/// A parsed `--signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalSpec {
    /// Signal number.
    pub number: i32,
    /// Seconds between the signal and SIGKILL (Slurm's default 60).
    pub secs: u32,
    /// `B:`: the batch shell only.
    pub batch_only: bool,
}

/// Parses `--signal`'s value: `[B:]SIG[@SECS]`, SIG a number (1-64) or a name with or
/// without `SIG` (`USR1`, `SIGTERM`…), SECS 0-65535 (default 60). Slurm's `R:`
/// (reservation) is refused: berth has no reservations.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_signal(value: &str) -> Result<SignalSpec, String> {
    let (batch_only, rest) = match value.split_once(':') {
        Some(("B", rest)) => (true, rest),
        Some(("R" | "RB" | "BR", _)) => return Err("R: (reservation) is not supported".into()),
        Some((flag, _)) => return Err(format!("unknown flag {flag:?} (only B:)")),
        None => (false, value),
    };
    let (sig, secs) = match rest.split_once('@') {
        Some((sig, secs)) => {
            let secs: u32 = secs
                .parse()
                .ok()
                .filter(|s| *s <= 65_535)
                .ok_or_else(|| format!("time {secs:?} is not a number of seconds 0-65535"))?;
            (sig, secs)
        }
        None => (rest, 60),
    };
    let number = match sig.parse::<i32>() {
        Ok(n) if (1..=64).contains(&n) => n,
        Ok(n) => return Err(format!("signal number {n} is out of range 1-64")),
        Err(_) => signal_by_name(sig).ok_or_else(|| format!("unknown signal {sig:?}"))?,
    };
    Ok(SignalSpec {
        number,
        secs,
        batch_only,
    })
}

/// The number of a signal named with or without `SIG`, in any case.
pub fn signal_by_name(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}
