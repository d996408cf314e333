//! Throwaway (and, for `make run`, persistent) PostgreSQL clusters.
//!
//! Debian's server binaries are found under `/usr/lib/postgresql/*/bin` (or on `PATH`, or
//! in `BOROUGH_PG_BIN`). PostgreSQL refuses to run as root, so when this process is root
//! every server command runs as the `postgres` user through `runuser`.
//!
//! A temporary cluster is copied from a template made once per machine by `initdb` (so a
//! test process pays a copy, not an initdb), listens on 127.0.0.1 only, on a free port, and
//! is watched by a small shell that holds a pipe from this process: when the process ends,
//! however it ends, the pipe closes and the shell stops the server and deletes its files.
//! No stray postgres survives `make test`.
//!
//! Every cluster is TLS only (`hostssl` in `pg_hba.conf`, TLS 1.3, plaintext rejected), its
//! certificate issued by a Borough PKI ([`ServerTls`]); its URLs say
//! `sslmode=verify-full` against that PKI's CA.

use std::io::Read;
use std::net::{TcpListener as StdListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The superuser every Borough cluster is initialised with.
pub const SUPERUSER: &str = "postgres";

pub use borough_tenancy::migrate::Login;

/// The files a cluster serves TLS with, and the CA its clients verify it against.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerTls {
    /// The `postgres.crt`/`.key` and `ca.crt` of a Borough PKI directory.
    pub fn in_pki(dir: &Path) -> ServerTls {
        ServerTls {
            ca: dir.join("ca.crt"),
            cert: dir.join("postgres.crt"),
            key: dir.join("postgres.key"),
        }
    }
}

/// A running PostgreSQL server.
pub struct Cluster {
    pub data_dir: PathBuf,
    pub port: u16,
    /// The CA clients verify the server against (`sslrootcert`).
    pub ca: PathBuf,
    superuser_password: String,
    /// Each service's login password.
    passwords: Vec<(Login, String)>,
    /// Temporary clusters: the watchdog's stdin. Dropping it (or exiting) stops the server.
    watchdog: Option<(Child, ChildStdin)>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Passwords of the temporary clusters (loopback only, deleted at exit).
const TEST_SUPERUSER_PASSWORD: &str = "testkit-superuser";

fn test_passwords() -> Vec<(Login, String)> {
    Login::ALL
        .iter()
        .map(|login| (*login, format!("testkit-{}", login.service())))
        .collect()
}

impl Cluster {
    /// Starts a temporary cluster on a free loopback port.
    pub fn start_temporary(tls: &ServerTls) -> Result<Cluster> {
        let bin = pg_bin_dir()?;
        let template = ensure_template(&bin)?;
        let mut last_err = None;
        for _ in 0..5 {
            let data_dir = std::env::temp_dir().join(format!(
                "borough-pg-{}-{}",
                std::process::id(),
                uuid::Uuid::now_v7().simple()
            ));
            as_server_user(Command::new("cp").arg("-a").arg(&template).arg(&data_dir))
                .status_ok()
                .context("copying the template cluster")?;
            install_tls(&data_dir, tls)?;
            let port = free_port()?;
            match spawn_watched(&bin, &data_dir, port, true) {
                Ok(watchdog) => {
                    let cluster = Cluster {
                        data_dir,
                        port,
                        ca: tls.ca.clone(),
                        superuser_password: TEST_SUPERUSER_PASSWORD.to_owned(),
                        passwords: test_passwords(),
                        watchdog: Some(watchdog),
                    };
                    match cluster.wait_accepting(Duration::from_secs(30)) {
                        Ok(()) => return Ok(cluster),
                        Err(e) => last_err = Some(e), // e.g. the port was taken meanwhile
                    }
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("PostgreSQL did not start")))
    }

    /// Opens (initialising if absent) a persistent cluster in `data_dir` and starts it
    /// on `port`. It is stopped by [`Cluster::stop`] (or when this process exits).
    pub fn start_persistent(
        data_dir: &Path,
        port: u16,
        superuser_password: &str,
        passwords: &[(Login, String)],
        tls: &ServerTls,
    ) -> Result<Cluster> {
        let bin = pg_bin_dir()?;
        if !data_dir.join("PG_VERSION").exists() {
            initdb(&bin, data_dir, superuser_password)?;
        }
        install_tls(data_dir, tls)?;
        let watchdog = spawn_watched(&bin, data_dir, port, false)?;
        let cluster = Cluster {
            data_dir: data_dir.to_owned(),
            port,
            ca: tls.ca.clone(),
            superuser_password: superuser_password.to_owned(),
            passwords: passwords.to_vec(),
            watchdog: Some(watchdog),
        };
        cluster.wait_accepting(Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// Pauses the server (fast shutdown; the data stays) until [`Cluster::resume`].
    pub fn pause(&mut self) -> Result<()> {
        self.tell("stop")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while StdTcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            if Instant::now() > deadline {
                bail!("PostgreSQL did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts a paused server again, on the same port and data.
    pub fn resume(&mut self) -> Result<()> {
        self.tell("start")?;
        self.wait_accepting(Duration::from_secs(30))
    }

    fn tell(&mut self, command: &str) -> Result<()> {
        use std::io::Write;
        let (_, stdin) = self
            .watchdog
            .as_mut()
            .ok_or_else(|| anyhow!("the cluster is stopped"))?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// A superuser URL for `database`.
    pub fn superuser_url(&self, database: &str) -> String {
        self.url(SUPERUSER, &self.superuser_password, database)
    }

    /// `login`'s URL for `database`.
    pub fn login_url(&self, login: Login, database: &str) -> String {
        self.url(login.role(), self.password(login), database)
    }

    /// `login`'s password (to create it, or to check it is not shown).
    pub fn password(&self, login: Login) -> &str {
        self.passwords
            .iter()
            .find(|(l, _)| *l == login)
            .map_or("", |(_, p)| p.as_str())
    }

    /// Every login with its password.
    pub fn passwords(&self) -> &[(Login, String)] {
        &self.passwords
    }

    /// `role`'s URL for `database`: TLS, the server verified against the cluster's CA and
    /// by name (`sslmode=verify-full`).
    pub fn url(&self, role: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{database}?{}",
            self.port,
            tls_params(&self.ca)
        )
    }

    fn wait_accepting(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // The postmaster accepts before it is ready for queries; pg_isready knows.
                let ready = Command::new(pg_bin_dir()?.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL did not accept connections on port {} within {timeout:?}; log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log_tail(&self) -> String {
        let mut log = String::new();
        let _ = std::fs::File::open(self.data_dir.join("postgres.log"))
            .and_then(|mut f| f.read_to_string(&mut log));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The query parameters of a URL that verifies the server fully against `ca`.
pub fn tls_params(ca: &Path) -> String {
    let path: String = ca
        .display()
        .to_string()
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("sslmode=verify-full&sslrootcert={path}")
}

/// The server's certificate and key into the data directory (owned by the server's user,
/// the key 0600 as PostgreSQL demands), and a `pg_hba.conf` that accepts TLS only.
fn install_tls(data_dir: &Path, tls: &ServerTls) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let hba = "# Written by Borough's test kit at each start: TLS only, passwords (SCRAM).\n\
               hostssl all all 127.0.0.1/32 scram-sha-256\n\
               hostssl all all ::1/128 scram-sha-256\n\
               hostnossl all all all reject\n";
    for (from, to, mode) in [
        (Some(&tls.cert), "server.crt", 0o600),
        (Some(&tls.key), "server.key", 0o600),
        (None, "pg_hba.conf", 0o600),
    ] {
        let target = data_dir.join(to);
        match from {
            Some(from) => {
                std::fs::copy(from, &target)
                    .with_context(|| format!("copying {} into the cluster", from.display()))?;
            }
            None => std::fs::write(&target, hba)?,
        }
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        if running_as_root() {
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(&target)
                .status_ok()?;
        }
    }
    Ok(())
}

/// The test kit's own variable: where PostgreSQL's server binaries are.
pub const PG_BIN: borough_config_client::Var = borough_config_client::Var::new(
    "BOROUGH_PG_BIN",
    "the newest /usr/lib/postgresql/<version>/bin",
    "Tests, make run and the benchmarks: where PostgreSQL's server binaries (initdb, \
     postgres) are",
);

/// Where Debian's (or another) PostgreSQL server binaries are.
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BIN.name) {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    // Elsewhere: initdb on PATH.
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        .ok_or_else(|| {
            anyhow!(
                "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and \
                 PATH); install Debian's `postgresql` package or set BOROUGH_PG_BIN"
            )
        })
}

/// Whether this process runs as root (then servers run as `postgres`).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `command`, run as the `postgres` user when we are root.
fn as_server_user(command: &mut Command) -> Command {
    if running_as_root() {
        let mut wrapped = Command::new("runuser");
        wrapped
            .args(["-u", "postgres", "--"])
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    } else {
        let mut same = Command::new(command.get_program());
        same.args(command.get_args());
        same
    }
}

trait StatusOk {
    fn status_ok(&mut self) -> Result<()>;
}

impl StatusOk for Command {
    fn status_ok(&mut self) -> Result<()> {
        let output = self
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {:?}", self.get_program()))?;
        if output.status.success() {
            Ok(())
        } else {
            bail!(
                "{:?} failed ({}): {}",
                self.get_program(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        }
    }
}

fn initdb(bin: &Path, data_dir: &Path, superuser_password: &str) -> Result<()> {
    if let Some(parent) = data_dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if running_as_root() {
        // initdb (as postgres) must be able to create data_dir in its parent.
        std::fs::create_dir_all(data_dir)?;
        Command::new("chown")
            .args(["postgres:postgres"])
            .arg(data_dir)
            .status_ok()?;
    }
    let pwfile =
        std::env::temp_dir().join(format!("borough-pwfile-{}", uuid::Uuid::now_v7().simple()));
    std::fs::write(&pwfile, format!("{superuser_password}\n"))?;
    let result = as_server_user(
        Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(data_dir)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C.UTF-8"])
            .args(["--auth-host=scram-sha-256", "--auth-local=peer"])
            .arg(format!("--pwfile={}", pwfile.display())),
    )
    .status_ok();
    let _ = std::fs::remove_file(&pwfile);
    result.context("initdb failed")
}

/// The template cluster, made once per machine and PostgreSQL version.
fn ensure_template(bin: &Path) -> Result<PathBuf> {
    let version = std::fs::read_to_string(bin.join("../share/PG_VERSION"))
        .ok()
        .or_else(|| {
            bin.parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str().map(str::to_owned))
        })
        .unwrap_or_else(|| "pg".to_owned());
    let template = std::env::temp_dir().join(format!("borough-pg-template-{}-v1", version.trim()));
    if template.join("PG_VERSION").exists() {
        return Ok(template);
    }
    // Build beside it, then rename: whoever renames first wins, the others use theirs.
    let building = template.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    initdb(bin, &building, TEST_SUPERUSER_PASSWORD)?;
    if std::fs::rename(&building, &template).is_err() {
        let _ = as_server_user(Command::new("rm").arg("-rf").arg(&building)).status_ok();
    }
    if template.join("PG_VERSION").exists() {
        Ok(template)
    } else {
        bail!("the template cluster at {} is unusable", template.display())
    }
}

/// Starts `postgres` under a shell that stops it when our end of its stdin closes, and
/// (for temporary clusters) deletes its files.
fn spawn_watched(
    bin: &Path,
    data_dir: &Path,
    port: u16,
    temporary: bool,
) -> Result<(Child, ChildStdin)> {
    let postgres = bin.join("postgres");
    let cleanup = if temporary {
        "rm -rf \"$DATA\""
    } else {
        "true"
    };
    // Test clusters trade durability for speed: the data is thrown away anyway.
    let speed = if temporary {
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    } else {
        ""
    };
    // Lines on stdin: `stop` and `start` pause and resume the server (for tests of a
    // database outage); end of input stops it for good.
    let script = format!(
        r#"DATA="$1"
start() {{
  "{postgres}" -D "$DATA" -p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories= \
    -c max_connections=300 -c shared_buffers=64MB -c ssl=on -c ssl_cert_file=server.crt \
    -c ssl_key_file=server.key -c ssl_min_protocol_version=TLSv1.3 {speed} \
    >>"$DATA/postgres.log" 2>&1 &
  pid=$!
}}
start
while read -r command; do
  case "$command" in
    stop) kill -INT "$pid" 2>/dev/null; wait "$pid" ;;
    start) start ;;
  esac
done
kill -INT "$pid" 2>/dev/null
wait "$pid"
{cleanup}
"#,
        postgres = postgres.display(),
    );
    let mut child = as_server_user(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("borough-pg-watchdog")
            .arg(data_dir),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .context("starting postgres")?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin pipe to the postgres watchdog"))?;
    // Give an immediate failure (bad data dir, port in use) a moment to show.
    std::thread::sleep(Duration::from_millis(50));
    if let Some(status) = child.try_wait()? {
        bail!("postgres exited at once ({status})");
    }
    Ok((child, stdin))
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
