//! The load tester against an in-process server: everyone connects, nothing
//! is lost on loopback, and the JSON report says so.

use std::process::Command;

use serde_json::Value;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// An in-process server on loopback: its URL, stop channel and task.
async fn start_server() -> (String, mpsc::Sender<()>, JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = mpsc::channel(2);
    let config = sluice::Config::default();
    let server =
        tokio::spawn(async move { sluice::serve(&config, listener, vec![socket], stopped).await });
    (url, stop, server)
}

/// Stop it at once (two stop signals) and wait.
async fn stop_server(stop: mpsc::Sender<()>, server: JoinHandle<std::io::Result<()>>) {
    for _ in 0..2 {
        let _ = stop.send(()).await;
    }
    let _ = server.await;
}

/// Run `sluice-loadtest` with `args` and `--json`; it must succeed.
/// Returns its summary (stdout) and JSON report.
async fn run_tester(name: &str, args: Vec<String>) -> (String, Value) {
    let json = std::env::temp_dir().join(format!("sluice-{name}-{}.json", std::process::id()));
    let run = tokio::task::spawn_blocking({
        let json = json.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_sluice-loadtest"))
                .args(args)
                .arg("--json")
                .arg(&json)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    (String::from_utf8_lossy(&run.stdout).to_string(), report)
}

/// `["--a", "b"]` as owned arguments.
fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_reports_everyone_connected_and_no_loss() {
    let (url, stop, server) = start_server().await;

    let pid = std::process::id().to_string();
    let (summary, report) = run_tester(
        "loadtest",
        args(&[
            "--url",
            &url,
            "--room",
            "lt",
            "--publishers",
            "1",
            "--subscribers",
            "3",
            // One probe decrypts; two count from the RTP headers.
            "--probes",
            "1",
            // Simulcast, every subscriber asking for the middle layer.
            "--simulcast",
            "--layer",
            "h",
            "--duration",
            "3s",
            "--server-pid",
            &pid,
        ]),
    )
    .await;
    assert!(summary.contains("latency"), "{summary}");
    assert_eq!(report["publishers"], 1);
    assert_eq!(report["subscribers"], 3);
    assert_eq!(report["connected"], 4, "{report}");
    assert_eq!(report["loss_pct"], 0.0, "{report}");
    assert!(
        report["packets_received"].as_u64().unwrap() >= 3 * 3 * 100,
        "{report}"
    );
    let latency = &report["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() > 0.0 && latency["p99"].as_f64().unwrap() < 1000.0);
    assert!(report["join_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(
        report["recv_kbps_per_subscriber"].as_f64().unwrap() > 100.0,
        "{report}"
    );
    assert!(
        report["server"]["rss_mb"].as_f64().unwrap() > 1.0,
        "{report}"
    );
    // The probe got h (apart from the first packets, before its switch).
    let layers = &report["probe_layers"];
    let (q, h, f) = (
        layers["q"].as_u64().unwrap(),
        layers["h"].as_u64().unwrap(),
        layers["f"].as_u64().unwrap(),
    );
    assert!(h > 100 && h > 10 * (q + f), "{report}");
    // The server's own forwarding delay, from its /metrics.
    assert!(
        report["server_delay_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );

    stop_server(stop, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capacity_search_steps_up_to_its_bound() {
    let (url, stop, server) = start_server().await;

    let pid = std::process::id().to_string();
    let (_, report) = run_tester(
        "capacity",
        args(&[
            "--url",
            &url,
            "--room",
            "cap",
            "--find-capacity",
            "--step",
            "2",
            "--max-subscribers",
            "4",
            "--duration",
            "1s",
            "--server-pid",
            &pid,
        ]),
    )
    .await;
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{report}");
    assert!(
        steps
            .iter()
            .all(|s| s["ok"] == true && s["loss_pct"] == 0.0),
        "{report}"
    );
    assert_eq!(report["capacity_subscribers"], 4);
    // The server (this test process) may use as many cores as it has.
    let cores = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|list| {
            list.trim()
                .split(',')
                .map(|part| match part.split_once('-') {
                    Some((a, b)) => b.parse::<f64>().unwrap() - a.parse::<f64>().unwrap() + 1.0,
                    None => 1.0,
                })
                .sum::<f64>()
        })
        .unwrap();
    assert_eq!(report["cpu_limit_pct"], 95.0 * cores, "{report}");

    stop_server(stop, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_has_everyone_watch_everyone_else() {
    let (url, stop, server) = start_server().await;

    let (_, report) = run_tester(
        "meeting",
        args(&[
            "--url",
            &url,
            "--room",
            "meet",
            "--meeting",
            "--publishers",
            "3",
            "--simulcast",
            "--layer",
            "q",
            // Every tile decrypts, so each reports its layers.
            "--probes",
            "6",
            "--duration",
            "3s",
        ]),
    )
    .await;
    // Three participants, each watching the two others: six tiles.
    assert_eq!(report["subscribers"], 6, "{report}");
    assert_eq!(report["connected"], 9, "{report}");
    assert_eq!(report["loss_pct"], 0.0, "{report}");
    let layers = &report["probe_layers"];
    let q = layers["q"].as_u64().unwrap();
    let others = layers["h"].as_u64().unwrap() + layers["f"].as_u64().unwrap();
    // A tile may start on another layer's keyframe and move to q at q's
    // next one, so a few of its first packets can be h or f.
    assert!(
        q > 100 && q > 2 * others,
        "tiles get the low layer: {report}"
    );

    stop_server(stop, server).await;
}

/// Set in the copy of this test binary that runs inside a network
/// namespace of its own.
const IN_NAMESPACE: &str = "SLUICE_LOADTEST_IN_NETNS";

/// Count-only subscribers on one shared socket, each with an address of
/// its own: the server tells them apart, everyone connects and nothing is
/// lost, while the tester holds one UDP socket for all of them.
///
/// The shared socket needs a network namespace with only loopback, so the
/// test runs itself again under `unshare --net` (as root) and does its work
/// there, server included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_only_subscribers_share_one_socket() {
    const NAME: &str = "count_only_subscribers_share_one_socket";
    if std::env::var_os(IN_NAMESPACE).is_none() {
        // As root a network namespace is enough; anyone else needs a user
        // namespace too, in which they are root.
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        });
        let flags: &[&str] = if root {
            &["--net"]
        } else {
            &["--user", "--map-root-user", "--net"]
        };
        let run = tokio::task::spawn_blocking(move || {
            Command::new("unshare")
                .args(flags)
                .arg("--")
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--nocapture"])
                .env(IN_NAMESPACE, "1")
                .output()
                .expect("run unshare (util-linux)")
        })
        .await
        .unwrap();
        assert!(
            run.status.success(),
            "in a new network namespace:\n{}\n{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        // The copy ran the test, rather than finding no test of that name.
        assert!(
            String::from_utf8_lossy(&run.stdout).contains("1 passed"),
            "{}",
            String::from_utf8_lossy(&run.stdout)
        );
        return;
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip (iproute2)");
    assert!(up.success(), "cannot bring loopback up in the namespace");

    let (url, stop, server) = start_server().await;
    let (summary, report) = run_tester(
        "shared",
        args(&[
            "--url",
            &url,
            "--room",
            "shared",
            "--publishers",
            "1",
            "--subscribers",
            "12",
            "--probes",
            "1",
            "--duration",
            "3s",
            "--shared-socket",
        ]),
    )
    .await;
    assert_eq!(report["connected"], 13, "{report}");
    assert_eq!(report["loss_pct"], 0.0, "{report}");
    // Every subscriber gets the whole stream (about 216 kbit/s of video
    // and 50 audio packets a second), so none was mistaken for another.
    assert!(
        report["recv_kbps_min"].as_f64().unwrap() > 150.0,
        "{report}"
    );
    assert!(
        report["packets_received"].as_u64().unwrap() >= 12 * 3 * 100,
        "{report}"
    );
    // The publisher's socket, the probe's, and one for the other eleven.
    assert_eq!(report["tester_udp_sockets"], 3, "{summary}\n{report}");

    stop_server(stop, server).await;
}
