//! Throwaway PostgreSQL clusters for tests: `initdb` into a temporary folder, the server on a
//! free loopback port with its socket in that folder, stopped (and the folder removed) when
//! the [`PgCluster`] is dropped.
//!
//! The server binaries are Debian's (`/usr/lib/postgresql/<version>/bin`, not on `PATH`), or
//! the folder `$NEMS_PG_BIN` names. `initdb` refuses to run as root: as root, the cluster
//! belongs to the `postgres` user and every server command runs through `runuser`. Without
//! the binaries a test prints a skip notice, or fails under `NEMS_REQUIRE_TOOLS=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway cluster. Its superuser is `nems`, with trust authentication on
/// loopback only.
#[derive(Debug)]
pub struct PgCluster {
    /// The server's port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    /// `Some(uid, gid)` of `postgres` when the commands run as that user.
    owner: Option<(u32, u32)>,
    _dir: tempfile::TempDir,
}

/// The folder with `initdb`, `pg_ctl` and `postgres`.
fn bin_dir() -> Option<PathBuf> {
    #[allow(
        clippy::disallowed_methods,
        reason = "test harness reads its own settings"
    )]
    if let Some(dir) = std::env::var_os("NEMS_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The uid and gid of `user`.
fn ids_of(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

impl PgCluster {
    /// Starts a cluster, or returns `None` after a skip notice when PostgreSQL is not
    /// installed (a failure with `NEMS_REQUIRE_TOOLS=1`). Blocking: call it from
    /// `spawn_blocking` in async tests.
    pub fn start(test: &str) -> Option<PgCluster> {
        let Some(bin) = bin_dir() else {
            super::tools::missing_tool(
                test,
                "PostgreSQL's server binaries are missing (apt-get install postgresql, or set NEMS_PG_BIN)",
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("nems-pg-")
            .tempdir()
            .expect("a temporary folder");
        let owner = if running_as_root() {
            let ids = ids_of("postgres").expect("a postgres user to own the cluster");
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))
                .expect("give the cluster folder to postgres");
            Some(ids)
        } else {
            None
        };
        let data = dir.path().join("data");
        let mut cluster = PgCluster {
            port: 0,
            bin,
            data,
            owner,
            _dir: dir,
        };
        let data = cluster.data.to_string_lossy().into_owned();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "nems",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        // A free port, then the server on it; a port taken meanwhile is tried again.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let options = cluster.server_options(port);
            let log = cluster.log_file();
            let started = cluster.try_run(
                "pg_ctl",
                &[
                    "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start",
                ],
            );
            if started {
                cluster.port = port;
                return Some(cluster);
            }
        }
        panic!(
            "{test}: the PostgreSQL server did not start; its log:\n{}",
            std::fs::read_to_string(cluster.log_file()).unwrap_or_default()
        );
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), started on a port of its
    /// own; with `synchronous`, the primary then waits for it at every commit
    /// (`synchronous_standby_names = '*'`). Blocking, like [`PgCluster::start`].
    pub fn standby(&self, synchronous: bool) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("nems-pg-standby-")
            .tempdir()
            .expect("a temporary folder");
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("give the standby folder to postgres");
        }
        let mut standby = PgCluster {
            port: 0,
            bin: self.bin.clone(),
            data: dir.path().join("data"),
            owner: self.owner,
            _dir: dir,
        };
        let data = standby.data.to_string_lossy().into_owned();
        let port = self.port.to_string();
        standby.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "nems",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let options = standby.server_options(free);
        let log = standby.log_file();
        standby.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start",
            ],
        );
        standby.port = free;
        if synchronous {
            let primary = self.data.to_string_lossy().into_owned();
            let conf = self.data.join("postgresql.auto.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
            text.push_str("synchronous_standby_names = '*'\n");
            std::fs::write(&conf, text).expect("write postgresql.auto.conf");
            self.run("pg_ctl", &["-D", &primary, "reload"]);
        }
        standby
    }

    /// Makes the server speak TLS with `cert_pem` / `key_pem` and refuse every TCP
    /// connection without it (`hostssl` only; the Unix socket stays open to the test, see
    /// [`PgCluster::connect_socket`]). Blocking, like [`PgCluster::start`].
    pub fn require_tls(&self, cert_pem: &str, key_pem: &str) {
        self.tls_only(cert_pem, key_pem, None);
    }

    /// As [`PgCluster::require_tls`], and TCP clients authenticate by a certificate
    /// `client_ca_pem` issued whose common name is the user's (pg_hba `cert`, which
    /// implies `clientcert=verify-full`).
    pub fn require_client_certificates(&self, cert_pem: &str, key_pem: &str, client_ca_pem: &str) {
        self.tls_only(cert_pem, key_pem, Some(client_ca_pem));
    }

    fn tls_only(&self, cert_pem: &str, key_pem: &str, client_ca_pem: Option<&str>) {
        let cert = self.data.join("server.crt");
        let key = self.data.join("server.key");
        std::fs::write(&cert, cert_pem).expect("write server.crt");
        std::fs::write(&key, key_pem).expect("write server.key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("server.key mode");
        let client_ca = self.data.join("client-ca.crt");
        if let Some(pem) = client_ca_pem {
            std::fs::write(&client_ca, pem).expect("write client-ca.crt");
        }
        if let Some((uid, gid)) = self.owner {
            for file in [&cert, &key, &client_ca] {
                if file.exists() {
                    std::os::unix::fs::chown(file, Some(uid), Some(gid)).expect("give to postgres");
                }
            }
        }
        let method = if client_ca_pem.is_some() {
            "cert"
        } else {
            "trust"
        };
        std::fs::write(
            self.data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 {method}\n\
                 host all all 127.0.0.1/32 reject\n"
            ),
        )
        .expect("write pg_hba.conf");
        let conf = self.data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
        text.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        if client_ca_pem.is_some() {
            text.push_str("ssl_ca_file = 'client-ca.crt'\n");
        }
        std::fs::write(&conf, text).expect("write postgresql.auto.conf");
        // A restart rather than a reload: `pg_ctl -w restart` returns once the server
        // accepts connections with the new settings (a reload gives no such moment).
        let data = self.data.to_string_lossy().into_owned();
        let options = self.server_options(self.port);
        let log = self.log_file();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "restart",
            ],
        );
    }

    /// A connection to `database` over the cluster's Unix socket (open after
    /// [`PgCluster::require_tls`]), its connection task spawned.
    pub async fn connect_socket(&self, database: &str) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.socket_dir())
            .port(self.port)
            .user("nems")
            .dbname(database);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to the test cluster's socket: {e}"));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Stops the server at once (`-m immediate`: as if its host died).
    pub fn kill(&self) {
        let data = self.data.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) {
        let data = self.data.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &data, "-w", "promote"]);
    }

    /// A `postgres://` URL for `database` (`postgres` always exists).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://nems@127.0.0.1:{}/{database}", self.port)
    }

    /// A connection to `database`, its connection task spawned.
    pub async fn connect(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url(database), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to the test cluster: {e}"));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Creates `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        self.connect("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.url(name)
    }

    /// The server's command-line settings: `port` on loopback, the socket in the folder.
    fn server_options(&self, port: u16) -> String {
        format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.socket_dir()
        )
    }

    fn socket_dir(&self) -> String {
        self.data
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .to_string_lossy()
            .into_owned()
    }

    fn log_file(&self) -> String {
        self.data
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .join("server.log")
            .to_string_lossy()
            .into_owned()
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        match self.owner {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> bool {
        self.command(tool)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data.to_string_lossy().into_owned();
        // Immediate: nothing of a throwaway cluster needs a clean shutdown.
        let _ = self.try_run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// True (after a skip notice naming `test`) when the backend matrix runs stacks on
/// PostgreSQL: for the tests about redb's own file.
pub fn matrix(test: &str) -> bool {
    #[allow(
        clippy::disallowed_methods,
        reason = "test harness reads its own settings"
    )]
    let on = std::env::var_os("NEMS_TEST_DATABASE_URL").is_some();
    if on {
        #[allow(clippy::print_stderr, reason = "a skip notice is the point")]
        {
            eprintln!("skipping {test}: it is about the redb store, and this run is on PostgreSQL");
        }
    }
    on
}

/// The backend matrix: under `NEMS_TEST_DATABASE_URL` (a cluster's base URL,
/// `postgres://user@host:port`, set by `scripts/with-postgres.sh`), the database of the
/// stack whose data directory is `data_dir`, created on first use (a restart with the
/// same directory finds the same database); `None` runs the stack on redb.
pub async fn test_database(data_dir: &Path) -> Option<String> {
    #[allow(
        clippy::disallowed_methods,
        reason = "test harness reads its own settings"
    )]
    let base = std::env::var("NEMS_TEST_DATABASE_URL").ok()?;
    let base = base.trim_end_matches('/').to_string();
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    let name = format!("nems_{:016x}", hasher.finish());
    let (client, connection) =
        tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to NEMS_TEST_DATABASE_URL: {e}"));
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap_or_else(|e| panic!("list databases: {e}"))
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    }
    drop(client);
    let _ = driver.await;
    Some(format!("{base}/{name}"))
}
