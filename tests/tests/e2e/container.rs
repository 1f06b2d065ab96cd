//! The container packaging, checked without a Docker engine (none runs on CI or the developers'
//! machines): the Dockerfile's images run binaries the workspace builds, with a port, a
//! healthcheck that agrees with the port the service listens on, and a non-root user; every
//! compose.yaml service has a healthcheck and waits for healthy dependencies; compose.yaml is a
//! valid Compose file when a Compose CLI is installed; the images' healthcheck script tells a
//! ready service from one that is not. That images build and start is not proven here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use ordering_tests::process::free_addr;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"))
}

/// One `FROM` stage of the Dockerfile: its base and its instructions (keyword upper-cased,
/// continuation lines joined).
#[derive(Debug)]
struct Stage {
    base: String,
    instructions: Vec<(String, String)>,
}

/// The Dockerfile's stages by name (an unnamed one by its index, as `docker build` names it).
fn dockerfile_stages() -> BTreeMap<String, Stage> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let mut stages = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_owned());
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words[..] {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_owned(),
                _ => stages.len().to_string(),
            };
            stages.insert(
                name.clone(),
                Stage {
                    base: words[0].to_owned(),
                    instructions: Vec::new(),
                },
            );
            current = Some(name);
        } else {
            let name = current.as_ref().expect("an instruction before the first FROM");
            stages.get_mut(name).unwrap().instructions.push((keyword, args));
        }
    }
    stages
}

/// The instructions of `stage` and of the stages it is built on, base first.
fn inherited<'a>(stages: &'a BTreeMap<String, Stage>, stage: &str) -> Vec<&'a (String, String)> {
    let mut chain = vec![&stages[stage]];
    while let Some(base) = stages.get(&chain.last().unwrap().base) {
        chain.push(base);
    }
    chain.iter().rev().flat_map(|s| &s.instructions).collect()
}

/// Every binary target of the workspace, with its package (`cargo metadata`, so auto-discovered
/// binaries count too).
fn workspace_binaries() -> BTreeMap<String, String> {
    let out = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1"])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let mut bins = BTreeMap::new();
    for package in meta["packages"].as_array().unwrap() {
        for target in package["targets"].as_array().unwrap() {
            if target["kind"].as_array().unwrap().iter().any(|k| k == "bin") {
                bins.insert(
                    target["name"].as_str().unwrap().to_owned(),
                    package["name"].as_str().unwrap().to_owned(),
                );
            }
        }
    }
    bins
}

#[test]
fn every_image_runs_a_workspace_binary_as_non_root_with_a_port_and_a_matching_healthcheck() {
    let stages = dockerfile_stages();
    let bins = workspace_binaries();
    let build = stages
        .values()
        .flat_map(|s| &s.instructions)
        .find(|(k, a)| k == "RUN" && a.contains("cargo build"));
    let build = &build.expect("a RUN cargo build").1;
    let mut served = BTreeSet::new();
    for name in stages.keys() {
        let all = inherited(&stages, name);
        let last = |keyword: &str| all.iter().rev().find(|(k, _)| k == keyword).map(|(_, a)| a.as_str());
        let Some(entrypoint) = stages[name].instructions.iter().find(|(k, _)| k == "ENTRYPOINT") else {
            continue;
        };
        let argv: Vec<String> = serde_json::from_str(&entrypoint.1).unwrap_or_else(|_| {
            panic!("stage {name}: ENTRYPOINT in exec form (a JSON array), so signals reach the binary")
        });
        let bin = &argv[0];
        let package = bins
            .get(bin)
            .unwrap_or_else(|| panic!("stage {name}: ENTRYPOINT {bin:?} is not a workspace binary ({bins:?})"));
        assert!(
            build.contains(&format!("-p {package}")),
            "the build does not build package {package}: {build}"
        );
        assert!(
            build.contains(&format!("target/release/{bin}")),
            "the build does not copy out {bin}: {build}"
        );
        assert!(
            all.iter().any(|(k, a)| k == "COPY" && a.contains(&format!("/{bin} "))),
            "stage {name}: {bin} is not copied into the image"
        );
        let user = last("USER").unwrap_or_else(|| panic!("stage {name}: no USER"));
        assert!(
            !matches!(user.split(':').next(), Some("root" | "0")),
            "stage {name} runs as {user}"
        );
        let port = last("EXPOSE").unwrap_or_else(|| panic!("stage {name}: no EXPOSE"));
        let healthcheck = last("HEALTHCHECK").unwrap_or_else(|| panic!("stage {name}: no HEALTHCHECK"));
        // The healthcheck probes the port of the address setting it names, which must be the
        // exposed one.
        let var = healthcheck
            .split('$')
            .nth(1)
            .map(|v| v.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .unwrap_or_else(|| panic!("stage {name}: the HEALTHCHECK names no address setting: {healthcheck}"));
        let addr = all
            .iter()
            .filter(|(k, _)| k == "ENV")
            .flat_map(|(_, a)| a.split_whitespace())
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == var)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("stage {name}: {var} is not set by an ENV"));
        assert!(
            addr.starts_with("0.0.0.0:") || addr.starts_with("[::]:"),
            "stage {name}: {var}={addr} is unreachable from outside"
        );
        assert_eq!(
            addr.rsplit(':').next(),
            Some(port),
            "stage {name}: {var}={addr} but EXPOSE {port}"
        );
        served.insert(bin.clone());
    }
    let services: BTreeSet<String> = bins
        .iter()
        // The test support's and the benchmark's binaries are tools, not services.
        .filter(|(_, p)| !["ordering-tests", "bench"].contains(&p.as_str()))
        .map(|(b, _)| b.clone())
        .collect();
    assert_eq!(served, services, "every service binary has an image, and only those");
}

/// compose.yaml's services as written: name → their lines, for the layout this file keeps
/// (two spaces of indentation per level, services under `services:`).
fn compose_services() -> BTreeMap<String, Vec<String>> {
    let text = read("compose.yaml");
    let mut services = BTreeMap::new();
    let mut in_services = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            in_services = line == "services:";
            current = None;
        } else if in_services && line.len() > 2 && !line[2..].starts_with([' ', '#']) {
            let name = line.trim().trim_end_matches(':').to_owned();
            services.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if let Some(name) = &current {
            services.get_mut(name).unwrap().push(line.trim().to_owned());
        }
    }
    services
}

#[test]
fn every_compose_service_has_a_healthcheck_and_waits_for_healthy_dependencies() {
    let stages = dockerfile_stages();
    let services = compose_services();
    for (name, lines) in &services {
        let target = lines
            .iter()
            .find_map(|l| l.strip_prefix("build:").and_then(|b| b.split("target:").nth(1)))
            .map(|t| t.trim_matches(|c: char| c.is_whitespace() || c == '}'));
        if let Some(target) = target {
            assert!(
                stages.contains_key(target),
                "{name}: build target {target} is not a Dockerfile stage"
            );
        }
        let image_checks = target.is_some_and(|t| inherited(&stages, t).iter().any(|(k, _)| k == "HEALTHCHECK"));
        assert!(
            image_checks || lines.iter().any(|l| l == "healthcheck:"),
            "{name} has no healthcheck (neither in compose.yaml nor in its image)"
        );
        for l in lines.iter().filter(|l| l.contains("condition:")) {
            assert!(
                l.contains("condition: service_healthy"),
                "{name} starts before a dependency is healthy: {l}"
            );
        }
        if name.ends_with("relay") {
            assert!(
                !lines.iter().any(|l| l.starts_with("ports:")),
                "{name} publishes a fixed host port: it could not be scaled"
            );
        }
    }
    assert!(
        services.contains_key("billing-relay"),
        "the sidecar example is missing: {services:?}"
    );
}

#[test]
fn compose_file_is_valid_for_the_installed_compose_cli() {
    let file = root().join("compose.yaml");
    let run = |cmd: &mut Command| {
        cmd.current_dir(root())
            .env("JWT_SECRET", "a-secret-of-32-bytes-for-a-check")
            .output()
    };
    let out = if run(Command::new("docker").args(["compose", "version"])).is_ok_and(|o| o.status.success()) {
        run(Command::new("docker")
            .args(["compose", "-f"])
            .arg(&file)
            .args(["config", "-q"]))
    } else if run(Command::new("docker-compose").arg("version")).is_ok_and(|o| o.status.success()) {
        // Debian's docker-compose 1.29 predates the top-level `name` (Compose v2 knows it); the
        // rest of the file is validated with that line left out.
        let dir = std::env::temp_dir().join(format!("compose-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("compose.yaml");
        let text = read("compose.yaml");
        std::fs::write(
            &copy,
            text.lines()
                .filter(|l| !l.starts_with("name:"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap();
        let out = run(Command::new("docker-compose")
            .arg("--project-directory")
            .arg(root())
            .arg("-f")
            .arg(&copy)
            .args(["config", "-q"]));
        std::fs::remove_dir_all(&dir).ok();
        out
    } else {
        eprintln!("no Compose CLI (docker compose, docker-compose): compose.yaml NOT validated");
        return;
    };
    let out = out.expect("run the Compose CLI");
    assert!(
        out.status.success(),
        "compose.yaml is invalid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Serves one HTTP request on a free port with `status`, and returns the port.
fn one_answer(status: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        // bash writes the request in pieces: read the whole head, as an HTTP server does.
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"GET /health/ready HTTP/1.1\r\n"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        write!(
            conn,
            "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
        )
        .unwrap();
    });
    port
}

#[test]
fn image_healthcheck_passes_only_when_the_service_answers_ready() {
    let check = |addr: String| {
        Command::new("bash")
            .arg(root().join("docker/healthcheck"))
            .arg(addr)
            .output()
            .expect("run bash")
            .status
            .success()
    };
    assert!(
        check(format!("0.0.0.0:{}", one_answer("200 OK"))),
        "ready service judged unhealthy"
    );
    assert!(
        check(format!("[::]:{}", one_answer("200 OK"))),
        "an IPv6 listen address is read wrong"
    );
    assert!(
        !check(format!("0.0.0.0:{}", one_answer("503 Service Unavailable"))),
        "unready service judged healthy"
    );
    assert!(!check(free_addr().to_string()), "a closed port judged healthy");
}
