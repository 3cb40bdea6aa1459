//! `pi bench` prints the documented JSON fields (small sizes here; the figures come from real runs).

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pi")).arg("bench").args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_gc_json_has_every_field() {
    let r = bench(&["gc", "--relus", "4096", "--json"]);
    for key in [
        "and_per_relu",
        "table_bytes_per_relu",
        "ot_bytes_per_relu",
        "online_bytes_per_relu",
        "garble_and_per_s",
        "eval_and_per_s",
        "aes_bound_garble_and_per_s",
        "aes_bound_eval_and_per_s",
        "ot_per_s",
        "relu_per_s_e2e",
    ] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {r}");
    }
    assert!(r["and_per_relu"].as_u64().unwrap() <= 120);
}

#[test]
fn bench_linear_json_covers_every_layer_and_is_correct() {
    let r = bench(&["linear", "--arch", "small-cnn", "--json"]);
    assert_eq!(r["layers"].as_array().unwrap().len(), 5); // conv1, res.conv1, res.conv2, conv2, fc
    assert_eq!(r["total"]["all_correct"], true);
    assert!(r["total"]["bytes_client_to_server"].as_u64().unwrap() > 0);
}
