//! A whole consortium on one machine: the coordinator serving on a loopback
//! socket (TLS with a fresh self-signed certificate, unless asked for plain
//! HTTP) and each party a tokio task with its own connection. The demo, the
//! service benchmark and the integration tests run the networked service
//! this way, through the same code paths as separate machines would.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shroud_crypto::IdentityPublicKey;

use crate::coordinator::{Engine, EngineConfig, ObservedSum};
use crate::dp::plan::PrivacyPlan;
use crate::net::metrics::Metrics;
use crate::net::server::{self, AppState, Listen};
use crate::net::tls;
use crate::policy::Policy;
use crate::store::PrivacyLedger;

pub struct CoordinatorOptions<'a> {
    pub policy: Policy,
    pub policy_text: String,
    pub db: &'a Path,
    pub out: &'a Path,
    /// Where to write the self-signed certificate; `None` serves plain HTTP.
    pub tls_dir: Option<&'a Path>,
    pub operator: IdentityPublicKey,
    pub allow_no_dp: bool,
    pub observer: Option<mpsc::Sender<ObservedSum>>,
}

/// A running coordinator.
pub struct LocalCoordinator {
    pub url: String,
    /// The certificate parties trust (`None` over plain HTTP).
    pub ca: Option<PathBuf>,
    pub state: AppState,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LocalCoordinator {
    /// A client TLS configuration trusting this coordinator.
    pub fn client_tls(&self) -> Result<Option<rustls::ClientConfig>, String> {
        self.ca.as_deref().map(tls::client_config).transpose()
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        self.handle.shutdown();
        let _ = self.task.await;
    }
}

pub async fn start_coordinator(o: CoordinatorOptions<'_>) -> Result<LocalCoordinator, String> {
    let plan =
        PrivacyPlan::for_policy(&o.policy).map_err(|e| format!("`{}`: {}", e.key, e.message))?;
    let limit = crate::net::server::body_limit(&o.policy, &plan);
    let (listen, ca, names) = match o.tls_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let (cert, key) = tls::self_signed(&["localhost".into(), "127.0.0.1".into()])?;
            let (cp, kp) = (dir.join("coordinator.crt"), dir.join("coordinator.key"));
            std::fs::write(&cp, cert).map_err(|e| format!("{}: {e}", cp.display()))?;
            // A fresh pair each run, the key readable by its owner only.
            let _ = std::fs::remove_file(&kp);
            crate::keyfile::write_secret(&kp, key.as_bytes())?;
            let names = tls::coordinator_names(&cp)?;
            (Listen::Tls(tls::server_config(&cp, &kp)?), Some(cp), names)
        }
        None => (
            Listen::InsecureHttp,
            None,
            crate::net::auth::CoordinatorNames::HostHeader,
        ),
    };
    let store = PrivacyLedger::open(o.db).map_err(|e| format!("{}: {e}", o.db.display()))?;
    let metrics = Arc::new(Metrics::default());
    let engine = Engine::open(
        EngineConfig {
            policy: o.policy,
            policy_text: o.policy_text,
            out: o.out.to_path_buf(),
            allow_no_dp: o.allow_no_dp,
            observer: o.observer,
        },
        store,
        metrics.clone(),
        Instant::now(),
    )
    .map_err(|e| e.to_string())?;
    let state = AppState::new(engine, Some(o.operator), names, metrics, limit);
    let handle = axum_server::Handle::new();
    let scheme = if ca.is_some() { "https" } else { "http" };
    let task = tokio::spawn(server::serve(
        state.clone(),
        "127.0.0.1:0".parse().expect("loopback address"),
        listen,
        handle.clone(),
    ));
    let addr = tokio::time::timeout(Duration::from_secs(10), handle.listening())
        .await
        .ok()
        .flatten()
        .ok_or("the coordinator did not start listening")?;
    Ok(LocalCoordinator {
        url: format!("{scheme}://127.0.0.1:{}", addr.port()),
        ca,
        state,
        handle,
        task,
    })
}

/// `shroud serve` as a child process, over TLS on loopback, with its files
/// in one folder: `policy.toml`, `server.crt`, `server.key`,
/// `operator.pub`; it keeps `coordinator.db` and `out/` there. Killed when
/// dropped.
pub struct ServeProcess {
    pub child: std::process::Child,
}

impl ServeProcess {
    pub fn start(exe: &Path, dir: &Path, port: u16, extra: &[&str]) -> std::io::Result<Self> {
        Self::start_with_env(exe, dir, port, extra, &[])
    }

    /// As [`ServeProcess::start`], with extra environment variables.
    pub fn start_with_env(
        exe: &Path,
        dir: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let child = std::process::Command::new(exe)
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--policy")
            .arg(dir.join("policy.toml"))
            .arg("--db")
            .arg(dir.join("coordinator.db"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(dir.join("server.crt"))
            .arg("--tls-key")
            .arg(dir.join("server.key"))
            .arg("--operator-public-key")
            .arg(dir.join("operator.pub"))
            .arg("--out")
            .arg(dir.join("out"))
            .args(extra)
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(ServeProcess { child })
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
