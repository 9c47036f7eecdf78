//! A mosquitto broker on loopback, for tests and `shiftnn adapt-demo`.
//!
//! [`Broker::start`] writes into a directory of the caller's choosing:
//!
//! - `mosquitto.conf`: one listener on `127.0.0.1:<free port>`, no
//!   anonymous access, persistence on (so QoS 1 messages queued for offline
//!   sessions and retained patches survive a restart), autosaved every
//!   second (a `kill -9` loses at most the last second of broker state; a
//!   [`Broker::stop`] loses nothing);
//! - `passwd`: one entry per device and one for the cloud, written by
//!   `mosquitto_passwd -b` (salted PBKDF2 hashes);
//! - `acl`: device `d` may write only `shiftnn/<fleet>/d/samples` and read
//!   only `shiftnn/<fleet>/d/affine`; the cloud user reads every device's
//!   samples (also through shared subscriptions) and reads and writes every
//!   device's affine and state topics (devices have no access to the
//!   state topics, where workers keep their unfolded learner state).
//!
//! [`Broker::kill`], [`Broker::stop`] and [`Broker::restart`] act on the
//! same port and files, so clients reconnect to the same address.

use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Who may connect, and to which fleet.
#[derive(Clone, Debug)]
pub struct BrokerUsers {
    /// Fleet name (second topic level).
    pub fleet: String,
    /// Devices: (username = device name, password).
    pub devices: Vec<(String, String)>,
    /// The cloud workers' username.
    pub cloud_user: String,
    /// The cloud workers' password.
    pub cloud_password: String,
}

/// A running (or stopped) mosquitto process with its files.
#[derive(Debug)]
pub struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// Where a program is: on `PATH`, or in the sbin/bin directories Debian
/// installs mosquitto into (`/usr/sbin` is not on a normal user's `PATH`).
fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The mosquitto binary, if installed.
pub fn find_mosquitto() -> Option<PathBuf> {
    find_program("mosquitto")
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// The ACL text for `users` (see the module docs).
pub fn acl_text(users: &BrokerUsers) -> String {
    let f = &users.fleet;
    let mut s = String::new();
    s.push_str(&format!("user {}\n", users.cloud_user));
    s.push_str(&format!("topic read shiftnn/{f}/+/samples\n"));
    s.push_str(&format!("topic readwrite shiftnn/{f}/+/affine\n"));
    s.push_str(&format!("topic readwrite shiftnn/{f}/+/state\n\n"));
    for (d, _) in &users.devices {
        s.push_str(&format!("user {d}\n"));
        s.push_str(&format!("topic write shiftnn/{f}/{d}/samples\n"));
        s.push_str(&format!("topic read shiftnn/{f}/{d}/affine\n\n"));
    }
    s
}

impl Broker {
    /// Write the files into `dir` (created if missing) and start mosquitto
    /// on a free loopback port.
    pub fn start(dir: impl AsRef<Path>, users: &BrokerUsers) -> Result<Broker> {
        let bin = find_mosquitto().ok_or_else(|| {
            anyhow!("mosquitto is not installed (Debian: apt-get install mosquitto)")
        })?;
        let passwd_bin = find_program("mosquitto_passwd").ok_or_else(|| {
            anyhow!("mosquitto_passwd is not installed (Debian package mosquitto)")
        })?;
        for name in std::iter::once(&users.fleet)
            .chain(std::iter::once(&users.cloud_user))
            .chain(users.devices.iter().map(|(d, _)| d))
        {
            if !valid_name(name) {
                bail!("\"{name}\": fleet, device and user names must be [A-Za-z0-9_-]+");
            }
        }
        if users.devices.iter().any(|(d, _)| *d == users.cloud_user) {
            bail!("a device may not be named like the cloud user");
        }
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;

        let passwd = dir.join("passwd");
        let _ = fs::remove_file(&passwd);
        fs::File::create(&passwd)?;
        let all = std::iter::once((&users.cloud_user, &users.cloud_password))
            .chain(users.devices.iter().map(|(d, p)| (d, p)));
        for (u, p) in all {
            let out = Command::new(&passwd_bin)
                .arg("-b")
                .arg(&passwd)
                .arg(u)
                .arg(p)
                .output()
                .with_context(|| format!("running {}", passwd_bin.display()))?;
            if !out.status.success() {
                bail!(
                    "mosquitto_passwd failed for user {u}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        fs::write(dir.join("acl"), acl_text(users))?;

        let port = free_port()?;
        // Running as root, mosquitto would switch to the `mosquitto` user,
        // which cannot read this directory: stay root then.
        let root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        let mut conf = String::new();
        if root {
            conf.push_str("user root\n");
        }
        conf.push_str(&format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous false\n\
             password_file {passwd}\n\
             acl_file {acl}\n\
             persistence true\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             max_queued_messages 100000\n\
             max_inflight_messages 64\n\
             message_size_limit 16777216\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n",
            passwd = passwd.display(),
            acl = dir.join("acl").display(),
            dir = dir.display(),
        ));
        let mut f = fs::File::create(dir.join("mosquitto.conf"))?;
        f.write_all(conf.as_bytes())?;
        drop(f);
        let mut b = Broker {
            bin,
            dir,
            port,
            child: None,
        };
        b.spawn()?;
        Ok(b)
    }

    fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the broker is already running");
        }
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        // Ready when the port accepts connections; a broker that exits
        // instead (bad config, port taken) is an error with its log.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "mosquitto exited at start ({st}); its log:\n{}",
                    self.log_text()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "mosquitto did not listen on port {} within 20 s; its log:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Loopback address clients connect to.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The listening port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the configuration, password file, ACL,
    /// persistence database and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Kill the process (SIGKILL): state since the last autosave is lost,
    /// as in a crash.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait()?;
        }
        Ok(())
    }

    /// Stop the process (SIGTERM): mosquitto saves its persistence database
    /// first, so queued messages and retained patches survive.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let st = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            if !matches!(st, Ok(s) if s.success()) {
                let _ = c.kill();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    c.wait()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Start again (after [`Broker::stop`] or [`Broker::kill`]) on the same
    /// port with the same files.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.stop()?;
        }
        self.child = None;
        self.spawn()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_confines_each_device_to_its_topics() {
        let u = BrokerUsers {
            fleet: "f".into(),
            devices: vec![("d1".into(), "p".into()), ("d2".into(), "q".into())],
            cloud_user: "cloud".into(),
            cloud_password: "c".into(),
        };
        let a = acl_text(&u);
        assert!(a.contains(
            "user d1\ntopic write shiftnn/f/d1/samples\ntopic read shiftnn/f/d1/affine\n"
        ));
        assert!(a.contains(
            "user d2\ntopic write shiftnn/f/d2/samples\ntopic read shiftnn/f/d2/affine\n"
        ));
        assert!(a.contains("topic readwrite shiftnn/f/+/state\n"));
        assert!(!a.contains("d1/state") && !a.contains("pattern"));
    }

    #[test]
    fn names_with_topic_characters_are_refused() {
        for bad in ["a/b", "+", "#", "", "a b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("dev-1_x"));
    }
}
