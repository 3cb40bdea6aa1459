//! Image classification datasets: IDX (MNIST, Fashion-MNIST) and the CIFAR-10/100 binary format.
//!
//! Every reader checks the bytes it is given (magic numbers, lengths, label ranges) and returns a
//! [`DataError`] instead of panicking; memory is only allocated for data that is actually present.

mod cifar;
mod idx;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cifar::{CIFAR_SHAPE, load_cifar_bin, load_cifar_bin_with};
pub use idx::{load_idx, load_idx_with};

/// Where the Debian package `dataset-fashion-mnist` installs the full Fashion-MNIST set.
pub const SYSTEM_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Number of classes assumed for IDX datasets (MNIST and Fashion-MNIST both have 10).
pub const IDX_CLASSES: usize = 10;

/// Which half of a dataset to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    Train,
    Test,
}

/// Per-channel normalisation applied after scaling pixels to [0, 1]: `(x / 255 - mean) / std`.
///
/// Recorded in each [`Dataset`] so that inference inputs can be prepared exactly as in training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// One mean per channel (or a single value used for every channel).
    pub mean: Vec<f32>,
    /// One standard deviation per channel (or a single value used for every channel).
    pub std: Vec<f32>,
}

/// Names accepted by [`Normalization::preset`] (`pi import --normalization`).
pub const NORMALIZATION_PRESETS: &[&str] =
    &["snl-cifar10", "snl-cifar100", "cifar10", "cifar100", "fashion-mnist", "mnist", "unit"];

impl Normalization {
    /// Fashion-MNIST training-set statistics; the default for IDX files.
    pub fn fashion_mnist() -> Self {
        Self { mean: vec![0.2860], std: vec![0.3530] }
    }

    /// MNIST training-set statistics.
    pub fn mnist() -> Self {
        Self { mean: vec![0.1307], std: vec![0.3081] }
    }

    /// CIFAR-10 training-set channel statistics (R, G, B).
    pub fn cifar10() -> Self {
        Self { mean: vec![0.4914, 0.4822, 0.4465], std: vec![0.2470, 0.2435, 0.2616] }
    }

    /// CIFAR-100 training-set channel statistics (R, G, B).
    pub fn cifar100() -> Self {
        Self { mean: vec![0.5071, 0.4865, 0.4409], std: vec![0.2673, 0.2564, 0.2762] }
    }

    /// The SNL reference code's CIFAR-10 constants (its `datasets.py`): CIFAR-10's means with
    /// the per-channel std of a different estimate (0.2023, 0.1994, 0.2010).
    pub fn snl_cifar10() -> Self {
        Self { mean: vec![0.4914, 0.4822, 0.4465], std: vec![0.2023, 0.1994, 0.2010] }
    }

    /// The SNL reference code's CIFAR-100 constants.
    pub fn snl_cifar100() -> Self {
        Self { mean: vec![0.5071, 0.4867, 0.4408], std: vec![0.2675, 0.2565, 0.2761] }
    }

    /// Only scale to [0, 1] (mean 0, std 1).
    pub fn unit() -> Self {
        Self { mean: vec![0.0], std: vec![1.0] }
    }

    /// The statistics called `name` (see [`NORMALIZATION_PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "fashion-mnist" => Self::fashion_mnist(),
            "mnist" => Self::mnist(),
            "cifar10" => Self::cifar10(),
            "cifar100" => Self::cifar100(),
            "snl-cifar10" => Self::snl_cifar10(),
            "snl-cifar100" => Self::snl_cifar100(),
            "unit" => Self::unit(),
            _ => return None,
        })
    }

    /// What models written before the normalisation was stored in the file were trained with:
    /// the data format's default, told apart by the input channels and the class count.
    pub fn legacy_default(channels: usize, classes: usize) -> Self {
        match (channels, classes) {
            (1, _) => Self::fashion_mnist(),
            (3, 100) => Self::cifar100(),
            (3, _) => Self::cifar10(),
            _ => Self::unit(),
        }
    }

    /// Mean and std of channel `c`, broadcasting single-value statistics.
    fn channel(&self, c: usize) -> (f32, f32) {
        let pick = |v: &[f32]| if v.len() == 1 { v[0] } else { v[c] };
        (pick(&self.mean), pick(&self.std))
    }

    /// Checks that the statistics fit `channels` channels and every std is finite and positive.
    pub fn validate(&self, channels: usize) -> Result<(), DataError> {
        self.check(channels).map_err(DataError::BadNormalization)
    }

    /// [`Normalization::validate`] with the problem as a sentence.
    pub fn check(&self, channels: usize) -> Result<(), String> {
        let fits = |len: usize| len == 1 || len == channels;
        if !fits(self.mean.len()) || !fits(self.std.len()) {
            return Err(format!("{} means and {} stds for {channels} channels", self.mean.len(), self.std.len()));
        }
        if self.mean.iter().any(|m| !m.is_finite()) || self.std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(format!("means {:?} and stds {:?} must be finite with positive stds", self.mean, self.std));
        }
        Ok(())
    }

    /// Converts raw CHW bytes of whole images to normalised floats.
    fn apply(&self, pixels: &[u8], shape: [usize; 3]) -> Vec<f32> {
        let plane = shape[1] * shape[2];
        let per_image = shape[0] * plane;
        let mut out = Vec::with_capacity(pixels.len());
        for image in pixels.chunks(per_image.max(1)) {
            for (c, channel) in image.chunks(plane.max(1)).enumerate() {
                let (mean, std) = self.channel(c);
                out.extend(channel.iter().map(|&p| (f32::from(p) / 255.0 - mean) / std));
            }
        }
        out
    }
}

/// A labelled image set held in memory as normalised `f32` in N x C x H x W order.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `n * C * H * W` normalised pixels, image after image, each channel-major.
    pub images: Vec<f32>,
    /// One label per image, each `< classes`.
    pub labels: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Image shape as `[C, H, W]`.
    pub shape: [usize; 3],
    /// Number of classes labels are drawn from.
    pub classes: usize,
    /// Normalisation that was applied to the pixels.
    pub normalization: Normalization,
}

impl Dataset {
    /// Builds a dataset from raw CHW pixel bytes, checking sizes, labels and the normalisation.
    pub fn from_raw(
        pixels: &[u8],
        labels: Vec<u8>,
        shape: [usize; 3],
        classes: usize,
        normalization: Normalization,
    ) -> Result<Self, DataError> {
        let n = labels.len();
        let per_image = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if per_image.and_then(|p| p.checked_mul(n)) != Some(pixels.len()) {
            return Err(DataError::WrongDimensions {
                path: PathBuf::new(),
                detail: format!("{} pixel bytes do not hold {n} images of shape {shape:?}", pixels.len()),
            });
        }
        if let Some((index, &label)) = labels.iter().enumerate().find(|(_, l)| usize::from(**l) >= classes) {
            return Err(DataError::LabelOutOfRange { path: PathBuf::new(), index, label, classes });
        }
        normalization.validate(shape[0])?;
        let images = normalization.apply(pixels, shape);
        Ok(Self { images, labels, n, shape, classes, normalization })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when the dataset holds no images.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Number of floats per image (`C * H * W`).
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The normalised pixels of image `i` (panics if `i >= len()`, like slice indexing).
    pub fn image(&self, i: usize) -> &[f32] {
        let len = self.image_len();
        &self.images[i * len..(i + 1) * len]
    }

    /// The label of image `i` (panics if `i >= len()`).
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// The first `n` images (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.n);
        Dataset {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            n,
            ..self.clone_meta()
        }
    }

    /// The images at `indices`, in that order (panics if an index is `>= len()`).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset { images, labels, n: indices.len(), ..self.clone_meta() }
    }

    /// Number of images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        counts
    }

    /// An empty dataset with the same shape, classes and normalisation (for struct update syntax).
    fn clone_meta(&self) -> Dataset {
        Dataset {
            images: Vec::new(),
            labels: Vec::new(),
            n: 0,
            shape: self.shape,
            classes: self.classes,
            normalization: self.normalization.clone(),
        }
    }
}

/// Why a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("missing file {}", path.display())]
    MissingFile { path: PathBuf },
    #[error(
        "no dataset in {}: expected IDX files ({{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]), \
         CIFAR-10 (data_batch_1..5.bin, test_batch.bin) or CIFAR-100 (train.bin, test.bin)",
        dir.display()
    )]
    UnknownFormat { dir: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: bad magic number {found:#010x}, expected {expected:#010x}", path.display())]
    BadMagic { path: PathBuf, found: u32, expected: u32 },
    #[error("{}: truncated, needs {expected} bytes but has {found}", path.display())]
    Truncated { path: PathBuf, expected: u64, found: u64 },
    #[error("{}: {extra} unexpected bytes after the {expected} bytes the header describes", path.display())]
    TrailingBytes { path: PathBuf, expected: u64, extra: u64 },
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch { images_path: PathBuf, images: u64, labels_path: PathBuf, labels: u64 },
    #[error("{}: wrong dimensions: {detail}", path.display())]
    WrongDimensions { path: PathBuf, detail: String },
    #[error("{}: label {label} of example {index} is out of range for {classes} classes", path.display())]
    LabelOutOfRange { path: PathBuf, index: usize, label: u8, classes: usize },
    #[error("{}: gzip error: {source}", path.display())]
    Gzip { path: PathBuf, source: std::io::Error },
    #[error("bad normalisation: {0}")]
    BadNormalization(String),
}

impl DataError {
    /// Maps an I/O error on `path` to `MissingFile` when it is "not found", else to `Io`.
    fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile { path: path.to_path_buf() }
        } else {
            DataError::Io { path: path.to_path_buf(), source }
        }
    }

    /// Fills in the file name of errors raised by [`Dataset::from_raw`], which knows no paths.
    fn at(self, file: &Path) -> Self {
        match self {
            DataError::WrongDimensions { path, detail } if path.as_os_str().is_empty() => {
                DataError::WrongDimensions { path: file.to_path_buf(), detail }
            }
            DataError::LabelOutOfRange { path, index, label, classes } if path.as_os_str().is_empty() => {
                DataError::LabelOutOfRange { path: file.to_path_buf(), index, label, classes }
            }
            other => other,
        }
    }
}

/// Reads `split` from `dir`, detecting IDX or CIFAR-10/100, with the format's default normalisation.
pub fn load_dir(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    load_dir_with(dir, split, None)
}

/// Like [`load_dir`], with an explicit normalisation (`None` picks the format's default).
pub fn load_dir_with(dir: &Path, split: Split, normalization: Option<Normalization>) -> Result<Dataset, DataError> {
    if let Some((images, labels)) = idx::find(dir, split) {
        let norm = normalization.unwrap_or_else(Normalization::fashion_mnist);
        return load_idx_with(&images, &labels, norm);
    }
    if let Some((paths, cifar100)) = cifar::find(dir, split) {
        let norm = normalization.unwrap_or_else(|| cifar::default_normalization(cifar100));
        return load_cifar_bin_with(&paths, cifar100, norm);
    }
    if !dir.is_dir() {
        return Err(DataError::MissingFile { path: dir.to_path_buf() });
    }
    Err(DataError::UnknownFormat { dir: dir.to_path_buf() })
}

/// The full Fashion-MNIST set when the Debian package is installed, else the subset bundled in `data/`.
pub fn default_fashion_mnist_dir() -> PathBuf {
    let system = Path::new(SYSTEM_FASHION_MNIST_DIR);
    if system.is_dir() {
        return system.to_path_buf();
    }
    bundled_fashion_mnist_dir()
}

/// The 6,000/1,000-image Fashion-MNIST subset shipped in the repository's `data/fashion-mnist`.
pub fn bundled_fashion_mnist_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match manifest.parent() {
        Some(root) => root.join("data").join("fashion-mnist"),
        None => manifest.join("..").join("data").join("fashion-mnist"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` to `dir/name` and returns the path.
    pub(super) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn tiny() -> Dataset {
        let pixels: Vec<u8> = (0..4 * 2 * 3 * 2).map(|i| i as u8 * 10).collect();
        Dataset::from_raw(&pixels, vec![0, 1, 2, 1], [2, 3, 2], 3, Normalization::unit()).unwrap()
    }

    #[test]
    fn normalisation_per_channel() {
        let norm = Normalization { mean: vec![0.5, 0.0], std: vec![0.5, 2.0] };
        let ds = Dataset::from_raw(&[255, 0, 255, 51], vec![0], [2, 1, 2], 1, norm.clone()).unwrap();
        assert_eq!(ds.images, vec![1.0, -1.0, 0.5, 0.1]);
        assert_eq!(ds.normalization, norm);
        let fm = Dataset::from_raw(&[0, 255], vec![0], [1, 1, 2], 10, Normalization::fashion_mnist()).unwrap();
        assert!((fm.images[0] - (-0.2860 / 0.3530)).abs() < 1e-6);
        assert!((fm.images[1] - ((1.0 - 0.2860) / 0.3530)).abs() < 1e-6);
    }

    #[test]
    fn bad_normalisation_rejected() {
        for norm in [
            Normalization { mean: vec![0.0; 2], std: vec![1.0] },
            Normalization { mean: vec![0.0], std: vec![0.0] },
            Normalization { mean: vec![f32::NAN], std: vec![1.0] },
        ] {
            let err = Dataset::from_raw(&[0; 3], vec![0], [3, 1, 1], 1, norm).unwrap_err();
            assert!(matches!(err, DataError::BadNormalization(_)), "{err}");
        }
    }

    #[test]
    fn accessors_take_subset() {
        let ds = tiny();
        assert_eq!(ds.len(), 4);
        assert!(!ds.is_empty());
        assert_eq!(ds.image_len(), 12);
        assert_eq!(ds.image(1)[0], 120.0 / 255.0);
        let t = ds.take(2);
        assert_eq!((t.n, t.labels.len(), t.images.len()), (2, 2, 24));
        assert_eq!(t.image(1), ds.image(1));
        assert_eq!(ds.take(100), ds);
        let s = ds.subset(&[3, 0, 3]);
        assert_eq!(s.labels, vec![1, 0, 1]);
        assert_eq!(s.image(0), ds.image(3));
        assert_eq!(s.image(1), ds.image(0));
        assert_eq!(ds.class_counts(), vec![1, 2, 1]);
        assert!(ds.take(0).is_empty());
    }

    #[test]
    fn from_raw_checks() {
        let err = Dataset::from_raw(&[0; 5], vec![0], [1, 2, 2], 10, Normalization::unit()).unwrap_err();
        assert!(matches!(err, DataError::WrongDimensions { .. }), "{err}");
        let err = Dataset::from_raw(&[0; 4], vec![10], [1, 2, 2], 10, Normalization::unit()).unwrap_err();
        assert!(matches!(err, DataError::LabelOutOfRange { label: 10, .. }), "{err}");
        let err = Dataset::from_raw(&[], vec![0], [usize::MAX, 2, 1], 10, Normalization::unit()).unwrap_err();
        assert!(matches!(err, DataError::WrongDimensions { .. }), "{err}");
    }

    #[test]
    fn load_dir_missing_and_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load_dir(&tmp.path().join("nope"), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
        write(tmp.path(), "readme.txt", b"hello");
        let err = load_dir(tmp.path(), Split::Test).unwrap_err();
        assert!(matches!(err, DataError::UnknownFormat { .. }), "{err}");
        assert!(err.to_string().contains("no dataset in"));
    }

    #[test]
    fn bundled_subset_loads() {
        let dir = bundled_fashion_mnist_dir();
        let train = load_dir(&dir, Split::Train).unwrap();
        assert_eq!((train.n, train.shape, train.classes), (6000, [1, 28, 28], 10));
        assert_eq!(train.class_counts(), vec![560, 643, 608, 612, 584, 594, 590, 617, 590, 602]);
        assert_eq!(train.normalization, Normalization::fashion_mnist());
        let test = load_dir(&dir, Split::Test).unwrap();
        assert_eq!((test.n, test.images.len()), (1000, 1000 * 784));
        assert_eq!(test.class_counts(), vec![107, 105, 111, 93, 115, 87, 97, 95, 95, 95]);
        // Subset statistics are close to the full-set normalisation (mean ~0, std ~1).
        let mean = train.images.iter().map(|&x| f64::from(x)).sum::<f64>() / train.images.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn default_dir_loads() {
        let dir = default_fashion_mnist_dir();
        let test = load_dir(&dir, Split::Test).unwrap();
        assert!(test.n == 1000 || test.n == 10_000, "{} test images in {}", test.n, dir.display());
        if Path::new(SYSTEM_FASHION_MNIST_DIR).is_dir() {
            assert_eq!(dir, Path::new(SYSTEM_FASHION_MNIST_DIR));
            // The bundled subset is the head of the full set.
            let bundled = load_dir(&bundled_fashion_mnist_dir(), Split::Test).unwrap();
            assert_eq!(test.take(1000), bundled);
        }
    }
}
