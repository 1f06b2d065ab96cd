//! A headless Chromium for tests, driven over WebDriver (`fantoccini`) through a chromedriver of
//! the test's own, on a free port.
//!
//! Debian's `chromium` and `chromium-driver` are installed by `scripts/services` when missing; a
//! test that finds neither fails with that advice rather than skipping, so a green run always
//! means the page was really driven.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::process::free_addr;

/// The Chromium binary Debian's package installs.
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver child process and one browser session on it. Close the session with
/// [`Browser::close`] before dropping, so Chromium exits before its driver is killed.
pub struct Browser {
    pub client: Client,
    _driver: Child,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless session (1280×1024).
    pub async fn start(log_dir: &Path) -> Self {
        let chromedriver = which("chromedriver");
        assert!(
            Path::new(CHROMIUM).exists() && chromedriver.is_some(),
            "browser tests need Debian's chromium and chromium-driver: run scripts/services (it installs them)"
        );
        let addr = free_addr();
        let log = log_dir.join("chromedriver.log");
        let driver = Command::new(chromedriver.expect("checked"))
            .arg(format!("--port={}", addr.port()))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr}; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // Root in CI needs --no-sandbox; there is no X server, hence headless.
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1024"]
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| panic!("open a Chromium session: {e}; see {}", log.display()));
        Self {
            client,
            _driver: driver,
        }
    }

    /// Saves a screenshot of the page as `<dir>/<name>.png` and returns its path.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Ends the session (Chromium exits), then the driver is killed.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// How long [`wait_for`] waits for an element.
pub const WAIT: Duration = Duration::from_secs(30);

/// The first element matching `css`, waiting up to [`WAIT`] for it to appear.
pub async fn wait_for(client: &Client, css: &str) -> Element {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page within {WAIT:?}: {e}"))
}

/// Where tests leave what a person may want to look at afterwards (screenshots, driver logs):
/// `target/test-artifacts/<name>/`, kept after the run.
pub fn artifact_dir(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts").join(name);
    std::fs::create_dir_all(&dir).expect("create the artefact directory");
    dir
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}
