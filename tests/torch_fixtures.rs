//! Against PyTorch itself: `tests/fixtures/snl-resnet18` holds a checkpoint that PyTorch saved
//! as the SNL reference code saves its own (`resnet18_in`, CIFAR-10, binary alphas), images, and
//! the logits PyTorch computed from them with the reference's network definition
//! (`experiments/torch-fixtures/make.py` wrote them; CI cannot install torch). A checkpoint
//! imported here must compute the same function: the f32 engine, the fixed-point engine and
//! private inference over TCP.

use ndarray::Array2;
use ndarray_npy::ReadNpyExt;
use pi_model::engine::argmax;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snl-resnet18").join(name)
}

fn pi(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pi")).args(args).output().expect("runs pi");
    assert!(out.status.success(), "pi {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json on stdout")
}

fn read_npy(path: &Path) -> Array2<f32> {
    Array2::<f32>::read_npy(std::fs::File::open(path).unwrap()).unwrap()
}

/// Largest |a - b| over a row, relative to the row's largest |logit| in `want`.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

/// Imports the checkpoint with `pi import` (defaults: the reference's normalisation for CIFAR-10).
fn import(dir: &Path) -> PathBuf {
    let out = dir.join("imported.safetensors");
    let report = pi(&[
        "import",
        "--arch",
        "resnet18",
        "--checkpoint",
        fixture("checkpoint.pth.tar").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("fixture.json")).unwrap()).unwrap();
    assert_eq!(report["relus_kept"], meta["relus_kept"]);
    assert_eq!(report["relus_total"], meta["relus_total"]);
    assert_eq!(report["had_masks"], true);
    assert_eq!(report["normalization_source"], "snl-cifar10");
    assert_eq!(report["non_binary_alphas"], 0);
    out
}

#[test]
fn pytorch_logits_match_the_f32_and_fixed_point_engines() {
    let dir = tempfile::tempdir().unwrap();
    let model = import(dir.path());
    let torch = read_npy(&fixture("logits.npy"));
    for (engine, bound) in [("f32", 1e-4f32), ("fixed-point", 1e-2)] {
        let npy = dir.path().join(format!("{engine}.npy"));
        let mut args = vec!["eval", model.to_str().unwrap(), "--json"];
        let images = fixture("images.bin");
        args.extend(["--data", images.to_str().unwrap(), "--logits", npy.to_str().unwrap()]);
        if engine == "fixed-point" {
            args.push("--fixed-point");
        }
        let report = pi(&args);
        // Each image's label is PyTorch's prediction.
        assert_eq!(report["accuracy"], 1.0, "{engine}: {report}");
        let ours = read_npy(&npy);
        assert_eq!(ours.dim(), torch.dim());
        for (i, (a, b)) in ours.rows().into_iter().zip(torch.rows()).enumerate() {
            let (a, b) = (a.to_vec(), b.to_vec());
            let err = relative_error(&a, &b);
            assert!(err < bound, "{engine}, image {i}: relative error {err} (ours {a:?}, PyTorch {b:?})");
        }
    }
}

/// Private inference over loopback TCP on the imported model: the client reads the CIFAR batch
/// file and normalises it as the server announces (the reference's constants, not the CIFAR-10
/// default), and predicts what PyTorch predicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_inference_predicts_what_pytorch_predicted() {
    use pi_client::{ClientOptions, ClientTransport, InferOptions};
    let dir = tempfile::tempdir().unwrap();
    let model = import(dir.path());
    let served = std::sync::Arc::new(pi_server::prepare(&model, &pi_server::PrepareOptions::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(pi_server::serve(
        listener,
        served,
        pi_server::Limits::default(),
        pi_server::ServerTransport::Plaintext,
    ));
    let opts = InferOptions {
        server: addr,
        data: fixture("images.bin"),
        count: 2,
        reference_model: None,
        connection: ClientOptions::new(ClientTransport::Plaintext),
    };
    let report = pi_client::run(&opts, |_, _| {}).await.unwrap();
    let torch = read_npy(&fixture("logits.npy"));
    for (i, rec) in report.per_inference.iter().enumerate() {
        let want = torch.row(i).to_vec();
        assert_eq!(rec.prediction, argmax(&want), "image {i}: PI {:?}, PyTorch {want:?}", rec.logits);
        let err = relative_error(&rec.logits, &want);
        assert!(err < 1e-2, "image {i}: relative error {err} (PI {:?}, PyTorch {want:?})", rec.logits);
    }
}
