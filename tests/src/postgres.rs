//! A throwaway PostgreSQL server for tests: Debian's `postgresql` package (installed with
//! apt-get when missing), a fresh cluster from `initdb` in a temporary directory, served
//! on a free loopback port as the `postgres` user (the server refuses to run as root).
//! Stopped and deleted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server; [`PgServer::url`] connects to it.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    user: Option<String>,
}

fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl PgServer {
    /// Installs PostgreSQL if needed, creates a cluster and starts it.
    ///
    /// # Errors
    /// Why no server could be had (the caller prints it and skips).
    pub fn start() -> Result<PgServer, String> {
        crate::ensure_debian_packages(&["postgresql"])?;
        let bin =
            pg_bin().ok_or("postgresql is installed but no initdb under /usr/lib/postgresql")?;
        let dir = tempfile::Builder::new()
            .prefix("berth-pg")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let root = nix::unistd::geteuid().is_root();
        let user = root.then(|| "postgres".to_string());
        if root {
            // The server runs as `postgres`: hand it the directory.
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
                "chown",
            )?;
            run(Command::new("chmod").args(["755"]).arg(dir.path()), "chmod")?;
        }
        let pg = PgServer {
            port: crate::free_port(),
            dir,
            bin,
            user,
        };
        let data = pg.data();
        run(
            &mut pg.as_server(
                &pg.bin.join("initdb"),
                &["-A", "trust", "-U", "postgres", "-D", &data],
            ),
            "initdb",
        )?;
        pg.resume()?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn as_server(&self, program: &Path, args: &[&str]) -> Command {
        match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(program).args(args);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown); [`PgServer::resume`] starts it again on the same
    /// port with the same data.
    ///
    /// # Errors
    /// pg_ctl's complaint.
    pub fn stop(&self) -> Result<(), String> {
        let data = self.data();
        run(
            &mut self.as_server(
                &self.bin.join("pg_ctl"),
                &["-D", &data, "-m", "fast", "-w", "stop"],
            ),
            "pg_ctl stop",
        )
    }

    /// Starts the server and waits until it accepts connections.
    ///
    /// # Errors
    /// pg_ctl's complaint.
    pub fn resume(&self) -> Result<(), String> {
        let data = self.data();
        let sock = self.dir.path().display().to_string();
        let opts = format!(
            "-p {} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port
        );
        let log = self.dir.path().join("log").display().to_string();
        run(
            &mut self.as_server(
                &self.bin.join("pg_ctl"),
                &[
                    "-D", &data, "-o", &opts, "-l", &log, "-w", "-t", "60", "start",
                ],
            ),
            "pg_ctl start",
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
