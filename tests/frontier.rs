//! The frontier commands (`pi bench e2e`, `pi bench pareto`) on small models, the least-squares fit,
//! the link model on tokio's paused clock, and the Pareto marking.

use pi_channel::{Channel, HEADER_LEN, Link, MsgKind, Shaped};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

fn pi(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pi")).args(args).output().expect("runs pi")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = pi(args);
    assert!(out.status.success(), "pi {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn num(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64().unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[test]
fn e2e_json_has_every_point_phase_and_layer() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("e2e.svg");
    let r = json(&[
        "bench",
        "e2e",
        "--arch",
        "small-cnn",
        "--relus",
        "3000,600",
        "--net",
        "lan",
        "--repeat",
        "2",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(r["net"]["name"], "lan");
    assert_eq!(num(&r, "net.bandwidth_bps"), 1e9);
    assert_eq!(num(&r, "net.rtt_ms"), 0.5);
    let points = r["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for (p, relus) in points.iter().zip([3000u64, 600]) {
        assert_eq!(p["relus"].as_u64(), Some(relus));
        assert_eq!(p["relus_total"].as_u64(), Some(20_384));
        assert_eq!(p["repeat"].as_u64(), Some(2));
        for phase in ["offline_s", "online_s", "total_s"] {
            let (lo, med, hi) =
                (num(p, &format!("{phase}.min")), num(p, &format!("{phase}.median")), num(p, &format!("{phase}.max")));
            assert!(0.0 < lo && lo <= med && med <= hi, "{phase}: {lo} {med} {hi}");
        }
        for dir in ["offline_bytes", "online_bytes"] {
            let (up, down) = (num(p, &format!("{dir}.client_to_server")), num(p, &format!("{dir}.server_to_client")));
            assert!(up > 0.0 && down > 0.0 && num(p, &format!("{dir}.total")) == up + down);
        }
        // Input, one round per ReLU layer with survivors (all four of small-cnn), logits.
        assert_eq!(p["online_rounds"].as_u64(), Some(5));
        assert_eq!(p["frac_bits"].as_u64(), Some(12));
        assert!(num(p, "offline.he_s") > 0.0 && num(p, "offline.gc_ot_s") > 0.0);
        assert!(num(p, "online.linear_s") > 0.0 && num(p, "online.gc_eval_s") > 0.0);
        // A 0.5 ms round trip per online round: at least 2.5 ms of online link wait.
        assert!(num(p, "online.link_s") >= 0.002, "{}", p["online"]);
        let layers = p["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 9); // 5 conv/linear + 4 ReLU nodes
        let kept: u64 = layers.iter().filter(|l| l["kind"] == "relu").map(|l| l["relus_kept"].as_u64().unwrap()).sum();
        assert_eq!(kept, relus);
        for l in layers {
            for k in ["he_s", "gc_ot_s", "link_s", "wall_s"] {
                assert!(l["offline"][k].as_f64().is_some_and(|v| v >= 0.0), "{k} in {l}");
            }
            for k in ["linear_s", "gc_eval_s", "link_s", "wall_s"] {
                assert!(l["online"][k].as_f64().is_some_and(|v| v >= 0.0), "{k} in {l}");
            }
        }
    }
    // Fewer ReLUs, fewer bytes.
    assert!(num(&points[1], "online_bytes.total") < num(&points[0], "online_bytes.total"));
    for phase in ["offline", "online", "total"] {
        let f = &r["fit"][phase];
        assert_eq!(f["points"].as_u64(), Some(2), "{phase}");
        assert!(
            f["r2"].as_f64().is_some() && f["intercept_s"].as_f64().is_some() && f["per_relu_s"].as_f64().is_some()
        );
    }
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.contains("surviving ReLUs") && svg_text.contains("online fit"));
    // `pi bench plot` redraws the same picture from the saved JSON.
    let saved = dir.path().join("e2e.json");
    std::fs::write(&saved, r.to_string()).unwrap();
    let again = dir.path().join("again.svg");
    let out = pi(&["bench", "plot", saved.to_str().unwrap(), "--svg", again.to_str().unwrap(), "--title", "small-cnn"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(again).unwrap(), svg_text);
}

#[test]
fn pareto_json_marks_the_frontier() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/small-cnn-fmnist.safetensors");
    let full = dir.path().join("full.safetensors");
    let random = dir.path().join("random-500.safetensors");
    assert!(pi(&["init", "--arch", "small-cnn", "--out", full.to_str().unwrap()]).status.success());
    assert!(
        pi(&["init", "--arch", "small-cnn", "--seed", "1", "--mask-keep", "0.025", "--out", random.to_str().unwrap()])
            .status
            .success()
    );
    std::fs::write(dir.path().join("random-500.json"), r#"{"method": "random", "budget": 500}"#).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let models = format!("{},{},{}", bundled.display(), full.display(), random.display());
    let svg = dir.path().join("p.svg");
    let r = json(&[
        "bench",
        "pareto",
        "--models",
        &models,
        "--data",
        data.to_str().unwrap(),
        "--net",
        "lan",
        "--count",
        "3",
        "--frac-bits",
        "auto",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(r["net"]["name"], "lan");
    assert_eq!(r["count"].as_u64(), Some(3));
    // `--frac-bits auto` per model, on the data's training split: the bundled model needs 10.
    assert_eq!(r["models"][0]["frac_bits"].as_u64(), Some(10));
    let ms = r["models"].as_array().unwrap();
    assert_eq!(ms.len(), 3);
    assert_eq!(ms[0]["method"], "snl"); // from small-cnn-fmnist.linearize.json
    assert_eq!(ms[0]["budget"].as_u64(), Some(3000));
    assert_eq!(ms[1]["method"], "full");
    assert_eq!(ms[2]["method"], "random");
    assert_eq!(ms[2]["budget"].as_u64(), Some(500));
    // The trained model is far more accurate than the two random networks.
    assert!(num(&ms[0], "accuracy_f32") > 0.85 && num(&ms[1], "accuracy_f32") < 0.5);
    assert_eq!(ms[0]["test_images"].as_u64(), Some(1000));
    for m in ms {
        assert_eq!(m["count"].as_u64(), Some(3));
        assert!(num(m, "agreement_f32") >= 2.0 / 3.0, "{m}");
        assert!(num(m, "online_s.median") > 0.0 && num(m, "total_s.median") > num(m, "online_s.median"));
        // DELPHI's bytes per ReLU exceed ours, so its modelled latency is higher.
        assert!(num(m, "delphi_total_s") > num(m, "total_s.median"));
    }
    // The marking agrees with the definition, recomputed from the JSON.
    for key in ["online", "total"] {
        let pts: Vec<(f64, f64)> =
            ms.iter().map(|m| (num(m, &format!("{key}_s.median")), num(m, "accuracy_f32"))).collect();
        for (i, m) in ms.iter().enumerate() {
            let dominated = pts.iter().any(|&(l, a)| l <= pts[i].0 && a >= pts[i].1 && (l < pts[i].0 || a > pts[i].1));
            assert_eq!(m[format!("pareto_{key}")].as_bool(), Some(!dominated), "{key} {m}");
        }
    }
    // The most accurate model is always on the frontier.
    assert_eq!(ms[0]["pareto_total"], true);
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.matches("accuracy vs").count() == 2 && svg_text.contains("DELPHI"));
    let saved = dir.path().join("p.json");
    std::fs::write(&saved, r.to_string()).unwrap();
    let again = dir.path().join("again.svg");
    assert!(pi(&["bench", "plot", saved.to_str().unwrap(), "--svg", again.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read_to_string(again).unwrap(), svg_text);
}

#[test]
fn bad_flags_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = |args: &[&str]| {
        let out = pi(args);
        assert!(!out.status.success(), "pi {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(
        err(&["bench", "e2e", "--arch", "small-cnn", "--relus", "10", "--net", "moon"]).contains("unknown network")
    );
    assert!(err(&["bench", "e2e", "--arch", "small-cnn", "--relus", "999999"]).contains("cannot keep 999999"));
    assert!(err(&["bench", "e2e", "--arch", "small-cnn", "--relus", "10", "--repeat", "0"]).contains("--repeat"));
    assert!(err(&["bench", "e2e"]).contains("--model"));
    let e = err(&["bench", "e2e", "--arch", "small-cnn", "--relus", "10", "--frac-bits", "nine"]);
    assert!(e.contains("expected auto or a bit count"), "{e}");
    assert!(err(&["bench", "pareto", "--data", "data/fashion-mnist"]).contains("--models"));
    let m = dir.path().join("m.safetensors");
    assert!(pi(&["init", "--arch", "small-cnn", "--out", m.to_str().unwrap()]).status.success());
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    assert!(
        err(&["bench", "pareto", "--models", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--net", "none"])
            .contains("--net lan")
    );
    // A model whose input shape does not fit the data: a small-cnn on 2x28x28 images made by hand.
    let idx = dir.path().join("x-images-idx3-ubyte");
    let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 14, 0, 0, 0, 14];
    bytes.extend(std::iter::repeat_n(0u8, 14 * 14));
    std::fs::write(&idx, bytes).unwrap();
    std::fs::write(dir.path().join("x-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 1, 3]).unwrap();
    let e = err(&["bench", "pareto", "--models", m.to_str().unwrap(), "--data", idx.to_str().unwrap(), "--net", "lan"]);
    assert!(e.contains("takes [1, 28, 28] images"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

/// The fit on synthetic points: an exact line is recovered; noise lowers R² but not below what the
/// noise explains.
#[test]
fn least_squares_fit_on_synthetic_points() {
    use pi_bench::fit::fit_line;
    let exact: Vec<(f64, f64)> = [500.0, 1000.0, 4000.0, 8000.0].iter().map(|&x| (x, 0.8 + 3e-5 * x)).collect();
    let f = fit_line(&exact).unwrap();
    assert!((f.intercept_s - 0.8).abs() < 1e-9 && (f.per_relu_s - 3e-5).abs() < 1e-12 && f.r2 > 0.999_999);
    let noisy: Vec<(f64, f64)> =
        exact.iter().zip([0.01, -0.008, 0.006, -0.01]).map(|(&(x, y), e)| (x, y + e)).collect();
    let g = fit_line(&noisy).unwrap();
    assert!(g.r2 < 1.0 && g.r2 > 0.9, "{g:?}");
    assert!((g.per_relu_s - 3e-5).abs() < 1e-5 && (g.intercept_s - 0.8).abs() < 0.1, "{g:?}");
    assert!(fit_line(&[(1.0, 1.0)]).is_none());
}

/// The link on tokio's paused clock: B bytes take B·8/rate + RTT/2 exactly, in both directions,
/// whatever the frame size, and the sender does not wait for them.
#[tokio::test(start_paused = true)]
async fn link_delivers_after_wire_time_plus_half_rtt_exactly() {
    for (bytes, link) in [
        (1_000_000usize, Link::new(8e6, Duration::from_millis(40)).unwrap()),
        // 100 ms on the wire, more than a send buffer (LAN's 0.25 ms one way is below the paused
        // clock's 1 ms resolution, so a 2 ms RTT here).
        (12_500_000, Link::new(1e9, Duration::from_millis(2)).unwrap()),
        (2_500_000, Link::wan()), // 200 ms
        (1, Link::parse_net("8kbit,0ms").unwrap().unwrap()),
    ] {
        let (net, mut peer) = tokio::io::duplex(1 << 16);
        let mut shaped = Shaped::on_tokio_clock(net, link);
        let expected = link.transfer(bytes as u64) + link.rtt() / 2;
        let t0 = Instant::now();
        let payload = vec![5u8; bytes];
        let mut got = vec![0u8; bytes];
        let (w, r) = tokio::join!(
            async {
                shaped.write_all(&payload).await?;
                shaped.flush().await?;
                Ok::<_, std::io::Error>(t0.elapsed())
            },
            peer.read_exact(&mut got)
        );
        r.unwrap();
        assert_eq!(t0.elapsed(), expected, "{bytes} B over {}", link.name());
        if bytes <= pi_channel::link::IN_FLIGHT {
            assert_eq!(w.unwrap(), Duration::ZERO, "the sender waited");
        }
        let t1 = Instant::now();
        let (w, r) = tokio::join!(peer.write_all(&payload), shaped.read_exact(&mut got));
        w.unwrap();
        r.unwrap();
        assert_eq!(t1.elapsed(), expected, "{bytes} B back over {}", link.name());
    }
}

/// Request/response over the link: each exchange costs both transfers and one full RTT.
#[tokio::test(start_paused = true)]
async fn a_round_trip_costs_the_rtt_plus_both_transfers() {
    let (net, peer) = tokio::io::duplex(1 << 16);
    let link = Link::wan();
    let (mut a, mut b) = (Channel::new(Shaped::on_tokio_clock(net, link)), Channel::new(peer));
    let server = tokio::spawn(async move {
        let q = b.recv(MsgKind::Data).await.unwrap();
        b.send_now(MsgKind::Data, &vec![1u8; 2 * q.len() + HEADER_LEN]).await.unwrap();
    });
    let t0 = Instant::now();
    a.send_now(MsgKind::Data, &vec![0u8; 125_000 - HEADER_LEN]).await.unwrap(); // 10 ms on the wire
    a.recv(MsgKind::Data).await.unwrap(); // 250,000 - 2*8 + 8 + 8 bytes back: 20 ms
    server.await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(10 + 20 + 40));
}

/// `pi bench engine`: both ring paths agree, the Winograd layers are the 3x3 stride-1 ones with enough
/// channels and tiles, and the rates are consistent with the times and the measured bound.
#[test]
fn engine_bench_compares_winograd_with_direct_in_one_run() {
    let v = json(&["bench", "engine", "--arch", "small-cnn", "--repeat", "2", "--json"]);
    assert_eq!(v["outputs_equal"], true, "{v}");
    let layers = v["layers"].as_array().expect("layers");
    let wino: Vec<&str> =
        layers.iter().filter(|l| l["winograd"] == true).map(|l| l["name"].as_str().expect("name")).collect();
    // small-cnn: the first conv has one input channel (direct), the 14x14 16-channel 3x3 stride-1
    // conv is Winograd.
    assert_eq!(v["winograd_layers"].as_u64(), Some(wino.len() as u64));
    assert!(!wino.is_empty() && layers[0]["winograd"] == false, "{wino:?}");
    let macs = num(&v, "macs");
    assert_eq!(macs, layers.iter().map(|l| l["macs"].as_f64().expect("macs")).sum::<f64>());
    let rel = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
    assert!(rel(num(&v, "direct_macs_per_s"), macs / num(&v, "ring_direct_s.median")));
    assert!(rel(num(&v, "effective_of_bound"), num(&v, "effective_macs_per_s") / num(&v, "u64_mac_bound_per_s")));
    assert!(rel(num(&v, "speedup"), num(&v, "ring_direct_s.median") / num(&v, "ring_s.median")));
    assert!(num(&v, "u64_mac_bound_per_s") > 1e8);
}
