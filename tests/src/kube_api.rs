//! A stand-in for the Kubernetes API server, enough for the daemon's pod watch: it answers a
//! pod list with some fixture pods and a watch with `ADDED` events for others, over plain
//! HTTP/1.1, and records the request lines. The fixtures are real `v1` Pod objects
//! (`tests/fixtures/kubernetes`, checked with `kubernetes-validate`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The running stand-in; its threads end with the test process.
pub struct FakeApi {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    /// Serves `listed` in the list and `watched` as watch events (as JSON objects).
    #[must_use]
    pub fn start(listed: Vec<String>, watched: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().expect("the bound address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let pages = Arc::new((listed, watched));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, pages) = (Arc::clone(&log), Arc::clone(&pages));
                std::thread::spawn(move || serve(stream, &log, &pages.0, &pages.1));
            }
        });
        Self { addr, requests }
    }

    /// The request lines received so far (`GET /api/v1/pods?... HTTP/1.1`).
    #[must_use]
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A kubeconfig that points `kube` at this server, written into `dir`.
    #[must_use]
    pub fn kubeconfig(&self, dir: &Path) -> std::path::PathBuf {
        kubeconfig(dir, self.addr)
    }
}

/// A kubeconfig that points `kube` at `http://addr` without credentials, written into `dir`.
#[must_use]
pub fn kubeconfig(dir: &Path, addr: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
         http://{addr}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    \
         cluster: fake\n    user: fake\ncurrent-context: fake\n"
    );
    std::fs::write(&path, text).expect("the kubeconfig is written");
    path
}

/// One fixture pod, as JSON text.
#[must_use]
pub fn fixture(name: &str) -> String {
    let path = crate::workspace()
        .join("tests/fixtures/kubernetes")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Answers the requests of one connection (keep-alive) until it closes or a watch is served.
fn serve(stream: TcpStream, log: &Mutex<Vec<String>>, listed: &[String], watched: &[String]) {
    let mut reader = BufReader::new(stream.try_clone().expect("the stream clones"));
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        // The rest of the head (a GET has no body).
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
        }
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line.trim().to_owned());
        if line.contains("watch=true") {
            let mut body = String::new();
            for pod in watched {
                let event = format!("{{\"type\":\"ADDED\",\"object\":{}}}\n", compact(pod));
                body = body + &format!("{:x}\r\n", event.len()) + &event + "\r\n";
            }
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
                return;
            }
            if out.flush().is_err() {
                return;
            }
            // Keep the watch open, as the API server does until its timeout.
            std::thread::sleep(Duration::from_mins(2));
            return;
        }
        let items: Vec<String> = listed.iter().map(|p| compact(p)).collect();
        let body = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"PodList\",\"metadata\":{{\"resourceVersion\":\"100\"}},\"items\":[{}]}}",
            items.join(",")
        );
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
    }
}

/// A JSON document on one line (watch events are one per line).
fn compact(json: &str) -> String {
    json.lines().map(str::trim).collect()
}
