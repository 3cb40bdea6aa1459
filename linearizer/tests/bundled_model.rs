//! The bundled linearized model (`models/small-cnn-fmnist.safetensors`) keeps its accuracy on the
//! bundled Fashion-MNIST test images under the runtime's own f32 engine. Uses only pi-model, so it
//! can move to a crate that does not build burn.

use std::path::Path;

use pi_model::data::{Split, bundled_fashion_mnist_dir, load_dir};
use pi_model::engine::{argmax, run_f32};

/// ReLU budget the bundled model was linearized to (see models/README.md).
const BUDGET: usize = 3000;
/// Accuracy floor on the 1,000 bundled test images (measured 0.912; see models/README.md).
const MIN_ACCURACY: f64 = 0.88;

#[test]
fn bundled_model_is_accurate_and_within_budget() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/small-cnn-fmnist.safetensors");
    let model = pi_model::load(&path).expect("bundled model loads");
    assert_eq!(model.graph.arch, "small-cnn");
    assert!(model.is_folded(), "the bundled model is stored in inference form");
    let relus = model.kept_relus();
    assert!(relus <= BUDGET && relus > 0, "{relus} ReLUs");
    let test = load_dir(&bundled_fashion_mnist_dir(), Split::Test).expect("bundled test images");
    assert_eq!(test.n, 1000);
    let correct =
        (0..test.n).filter(|&i| argmax(&run_f32(&model, test.image(i)).unwrap()) == test.label(i) as usize).count();
    let acc = correct as f64 / test.n as f64;
    eprintln!("bundled model: {relus} ReLUs, accuracy {acc} on {} bundled test images", test.n);
    assert!(acc >= MIN_ACCURACY, "accuracy {acc} below {MIN_ACCURACY}");
}
