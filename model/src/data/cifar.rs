//! CIFAR-10 and CIFAR-100 binary files.
//!
//! Each record is the label byte(s) followed by 3 x 32 x 32 pixels, stored as the R, G and B planes
//! in row-major order (already C x H x W). CIFAR-10 has one label byte; CIFAR-100 has a coarse
//! (20 classes) then a fine (100 classes) label byte, and the fine label is used.

use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Normalization, Split};

/// Image shape of both CIFAR sets.
pub const CIFAR_SHAPE: [usize; 3] = [3, 32, 32];
const PIXELS: usize = 3 * 32 * 32;
const CIFAR100_COARSE: usize = 20;

/// The normalisation [`load_cifar_bin`] applies: the training-set channel statistics.
pub(crate) fn default_normalization(cifar100: bool) -> Normalization {
    if cifar100 { Normalization::cifar100() } else { Normalization::cifar10() }
}

/// Reads and concatenates CIFAR binary files with the set's channel normalisation.
pub fn load_cifar_bin<P: AsRef<Path>>(paths: &[P], cifar100: bool) -> Result<Dataset, DataError> {
    load_cifar_bin_with(paths, cifar100, default_normalization(cifar100))
}

/// Reads and concatenates CIFAR binary files (CIFAR-100 when `cifar100`) with the given normalisation.
pub fn load_cifar_bin_with<P: AsRef<Path>>(
    paths: &[P],
    cifar100: bool,
    normalization: Normalization,
) -> Result<Dataset, DataError> {
    let label_bytes = if cifar100 { 2 } else { 1 };
    let classes = if cifar100 { 100 } else { 10 };
    let record = label_bytes + PIXELS;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let file = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        if file.is_empty() || file.len() % record != 0 {
            let expected = (file.len() / record + 1) * record;
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                expected: expected as u64,
                found: file.len() as u64,
            });
        }
        pixels.reserve(file.len() / record * PIXELS);
        labels.reserve(file.len() / record);
        for (index, rec) in file.chunks_exact(record).enumerate() {
            let (head, image) = rec.split_at(label_bytes);
            if cifar100 && usize::from(head[0]) >= CIFAR100_COARSE {
                let (label, classes) = (head[0], CIFAR100_COARSE);
                return Err(DataError::LabelOutOfRange { path: path.to_path_buf(), index, label, classes });
            }
            let label = head[label_bytes - 1];
            if usize::from(label) >= classes {
                return Err(DataError::LabelOutOfRange { path: path.to_path_buf(), index, label, classes });
            }
            labels.push(label);
            pixels.extend_from_slice(image);
        }
    }
    Dataset::from_raw(&pixels, labels, CIFAR_SHAPE, classes, normalization)
}

/// The files of `split` and whether they are CIFAR-100, if `dir` (or its usual sub-directory) holds CIFAR.
///
/// Once one file of a set is seen, all the split's expected names are returned so that missing
/// ones are reported by name.
pub(crate) fn find(dir: &Path, split: Split) -> Option<(Vec<PathBuf>, bool)> {
    for d in [dir.to_path_buf(), dir.join("cifar-10-batches-bin")] {
        if d.join("data_batch_1.bin").is_file() || d.join("test_batch.bin").is_file() {
            let paths = match split {
                Split::Train => (1..=5).map(|i| d.join(format!("data_batch_{i}.bin"))).collect(),
                Split::Test => vec![d.join("test_batch.bin")],
            };
            return Some((paths, false));
        }
    }
    for d in [dir.to_path_buf(), dir.join("cifar-100-binary")] {
        if d.join("train.bin").is_file() || d.join("test.bin").is_file() {
            let name = match split {
                Split::Train => "train.bin",
                Split::Test => "test.bin",
            };
            return Some((vec![d.join(name)], true));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::tests::write;
    use super::super::{load_dir, load_dir_with};
    use super::*;
    use proptest::prelude::*;

    /// Encodes CIFAR records; pixel `p` of record `r` is `(r * 31 + p) % 256`.
    fn records(labels: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (r, head) in labels.iter().enumerate() {
            out.extend_from_slice(head);
            out.extend((0..PIXELS).map(|p| ((r * 31 + p) % 256) as u8));
        }
        out
    }

    fn check_pixels(ds: &Dataset, first_record: usize) {
        let norm = &ds.normalization;
        for i in 0..ds.n {
            let r = first_record + i;
            for (p, &x) in ds.image(i).iter().enumerate() {
                let c = p / 1024;
                let want = (((r * 31 + p) % 256) as f32 / 255.0 - norm.mean[c]) / norm.std[c];
                assert!((x - want).abs() < 1e-5, "image {i} pixel {p}: {x} vs {want}");
            }
        }
    }

    #[test]
    fn cifar10_format() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        for i in 1..=5u8 {
            write(&sub, &format!("data_batch_{i}.bin"), &records(&[&[i], &[9]]));
        }
        write(&sub, "test_batch.bin", &records(&[&[3], &[0], &[7]]));
        let train = load_dir(tmp.path(), Split::Train).unwrap();
        assert_eq!((train.n, train.shape, train.classes), (10, [3, 32, 32], 10));
        assert_eq!(train.labels, vec![1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
        assert_eq!(train.normalization, Normalization::cifar10());
        check_pixels(&train.subset(&[0, 1]), 0);
        let test = load_dir(&sub, Split::Test).unwrap();
        assert_eq!(test.labels, vec![3, 0, 7]);
        check_pixels(&test, 0);
        let direct = load_cifar_bin(&[sub.join("test_batch.bin")], false).unwrap();
        assert_eq!(direct, test);
        let unit = load_dir_with(tmp.path(), Split::Test, Some(Normalization::unit())).unwrap();
        assert_eq!(unit.image(1)[1], 32.0 / 255.0);
    }

    #[test]
    fn cifar100_format() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "train.bin", &records(&[&[19, 99], &[0, 42]]));
        write(tmp.path(), "test.bin", &records(&[&[5, 17]]));
        let train = load_dir(tmp.path(), Split::Train).unwrap();
        assert_eq!((train.n, train.classes), (2, 100));
        assert_eq!(train.labels, vec![99, 42]);
        assert_eq!(train.normalization, Normalization::cifar100());
        check_pixels(&train, 0);
        let test = load_dir(tmp.path(), Split::Test).unwrap();
        assert_eq!(test.labels, vec![17]);
        // Inside the archive's directory name too.
        let tmp2 = tempfile::tempdir().unwrap();
        let sub = tmp2.path().join("cifar-100-binary");
        std::fs::create_dir(&sub).unwrap();
        write(&sub, "test.bin", &records(&[&[5, 17]]));
        assert_eq!(load_dir(tmp2.path(), Split::Test).unwrap(), test);
    }

    #[test]
    fn missing_batch() {
        let tmp = tempfile::tempdir().unwrap();
        for i in [1, 2, 4, 5] {
            write(tmp.path(), &format!("data_batch_{i}.bin"), &records(&[&[0]]));
        }
        let err = load_dir(tmp.path(), Split::Train).unwrap_err();
        assert!(matches!(&err, DataError::MissingFile { path } if path.ends_with("data_batch_3.bin")), "{err}");
        let err = load_dir(tmp.path(), Split::Test).unwrap_err();
        assert!(matches!(&err, DataError::MissingFile { path } if path.ends_with("test_batch.bin")), "{err}");
        let tmp2 = tempfile::tempdir().unwrap();
        write(tmp2.path(), "test.bin", &records(&[&[0, 0]]));
        let err = load_dir(tmp2.path(), Split::Train).unwrap_err();
        assert!(matches!(&err, DataError::MissingFile { path } if path.ends_with("train.bin")), "{err}");
    }

    #[test]
    fn truncated_records() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = records(&[&[1], &[2]]);
        let p = write(tmp.path(), "short.bin", &bytes[..bytes.len() - 1]);
        let err = load_cifar_bin(&[&p], false).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 6146, found: 6145, .. }), "{err}");
        let p = write(tmp.path(), "empty.bin", &[]);
        let err = load_cifar_bin(&[&p], false).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 3073, found: 0, .. }), "{err}");
        // A CIFAR-10 file read as CIFAR-100 has the wrong record size.
        let p = write(tmp.path(), "ten.bin", &records(&[&[1]]));
        let err = load_cifar_bin(&[&p], true).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 3074, found: 3073, .. }), "{err}");
    }

    #[test]
    fn label_out_of_range() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(tmp.path(), "a.bin", &records(&[&[1], &[10]]));
        let err = load_cifar_bin(&[&p], false).unwrap_err();
        assert!(matches!(err, DataError::LabelOutOfRange { index: 1, label: 10, classes: 10, .. }), "{err}");
        let p = write(tmp.path(), "b.bin", &records(&[&[3, 100]]));
        let err = load_cifar_bin(&[&p], true).unwrap_err();
        assert!(matches!(err, DataError::LabelOutOfRange { index: 0, label: 100, classes: 100, .. }), "{err}");
        let p = write(tmp.path(), "c.bin", &records(&[&[20, 5]]));
        let err = load_cifar_bin(&[&p], true).unwrap_err();
        assert!(matches!(err, DataError::LabelOutOfRange { label: 20, classes: 20, .. }), "{err}");
    }

    #[test]
    fn missing_file_and_empty_list() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load_cifar_bin(&[tmp.path().join("none.bin")], false).unwrap_err();
        assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
        let empty = load_cifar_bin::<&Path>(&[], false).unwrap();
        assert!(empty.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(len in 0usize..3 * 3074, seed in any::<u8>(), cifar100 in any::<bool>()) {
            let tmp = tempfile::tempdir().unwrap();
            let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed >> 3)).collect();
            let p = write(tmp.path(), "r.bin", &bytes);
            if let Ok(ds) = load_cifar_bin(&[&p], cifar100) {
                prop_assert_eq!(ds.images.len(), ds.n * PIXELS);
                prop_assert!(ds.labels.iter().all(|&l| usize::from(l) < ds.classes));
            }
        }
    }
}
