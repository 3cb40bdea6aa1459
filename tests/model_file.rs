//! The `pi` binary end to end on model files: init, inspect, and the file read by Python's safetensors.

use std::process::Command;

fn pi(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pi")).args(args).output().expect("runs pi")
}

fn inspect_json(path: &str) -> serde_json::Value {
    let out = pi(&["inspect", path, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn init_and_inspect_report_the_relu_counts() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    for (arch, relus) in [("resnet18", 491_520u64), ("wrn22-8", 1_359_872)] {
        assert!(pi(&["init", "--arch", arch, "--out", &p(arch)]).status.success());
        let j = inspect_json(&p(arch));
        assert_eq!(j["relus"].as_u64(), Some(relus), "{arch}");
        assert_eq!(j["relus_total"].as_u64(), Some(relus), "{arch}");
        let masked = format!("{arch}-10");
        assert!(
            pi(&["init", "--arch", arch, "--mask-keep", "0.1", "--seed", "3", "--out", &p(&masked)]).status.success()
        );
        let kept = inspect_json(&p(&masked))["relus"].as_u64().unwrap() as f64;
        assert!((kept / relus as f64 - 0.1).abs() < 0.002, "{arch}: {kept}");
    }
}

#[test]
fn bad_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    assert!(pi(&["init", "--out", path.to_str().unwrap()]).status.success());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let out = pi(&["inspect", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pi(&["init", "--mask-keep", "1.5", "--out", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mask-keep"));
}

/// The file is plain safetensors: Python reads the tensors and the architecture JSON in the metadata.
/// `.ci/install-deps` installs the Python package.
#[test]
fn python_safetensors_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.safetensors");
    assert!(pi(&["init", "--arch", "resnet18", "--out", path.to_str().unwrap()]).status.success());
    let script = r#"
import json, sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="numpy") as f:
    meta = f.metadata()
    arch = json.loads(meta["architecture"])
    assert meta["format"] == "pi-model" and meta["format_version"] == "1"
    assert arch["arch"] == "resnet18" and len(arch["nodes"]) > 0
    assert f.get_tensor("conv1.weight").shape == (64, 3, 3, 3)
    print(len(list(f.keys())))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&path).output().expect("python3 runs");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim().parse::<usize>().unwrap() > 50);
}
