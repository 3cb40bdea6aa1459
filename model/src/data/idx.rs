//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed.
//!
//! Layout: magic `0x0000 <dtype> <ndim>` (big-endian), `ndim` big-endian u32 sizes, then the data.
//! Only unsigned-byte data is used: images `0x00000803` (N x rows x cols), labels `0x00000801` (N).

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{DataError, Dataset, IDX_CLASSES, Normalization, Split};

/// Magic number of an unsigned-byte, three-dimensional IDX file (images).
pub(crate) const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte, one-dimensional IDX file (labels).
pub(crate) const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads an IDX image file and its label file with Fashion-MNIST normalisation.
pub fn load_idx(images_path: &Path, labels_path: &Path) -> Result<Dataset, DataError> {
    load_idx_with(images_path, labels_path, Normalization::fashion_mnist())
}

/// Reads an IDX image file and its label file with the given normalisation (e.g. [`Normalization::mnist`]).
pub fn load_idx_with(
    images_path: &Path,
    labels_path: &Path,
    normalization: Normalization,
) -> Result<Dataset, DataError> {
    let images_file = std::fs::read(images_path).map_err(|e| DataError::io(images_path, e))?;
    let labels_file = std::fs::read(labels_path).map_err(|e| DataError::io(labels_path, e))?;
    let (dims, pixels) = parse(images_path, &images_file, IMAGES_MAGIC)?;
    let (label_dims, labels) = parse(labels_path, &labels_file, LABELS_MAGIC)?;
    let [n, rows, cols] = [dims[0], dims[1], dims[2]];
    if rows == 0 || cols == 0 {
        return Err(DataError::WrongDimensions {
            path: images_path.to_path_buf(),
            detail: format!("images of {rows} x {cols} pixels"),
        });
    }
    if label_dims[0] != n {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            images: n as u64,
            labels_path: labels_path.to_path_buf(),
            labels: label_dims[0] as u64,
        });
    }
    Dataset::from_raw(&pixels, labels, [1, rows, cols], IDX_CLASSES, normalization).map_err(|e| e.at(labels_path))
}

/// Parses one unsigned-byte IDX file held in `file` (gzip is detected by its magic bytes).
///
/// Returns the dimensions and the payload; the payload buffer only grows with bytes actually
/// present, so a header claiming huge sizes cannot trigger a huge allocation.
pub(crate) fn parse(path: &Path, file: &[u8], magic: u32) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let gzip = file.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read + '_> = if gzip { Box::new(MultiGzDecoder::new(file)) } else { Box::new(file) };
    let read_err = |e: std::io::Error| {
        if gzip { DataError::Gzip { path: path.to_path_buf(), source: e } } else { DataError::io(path, e) }
    };

    let ndim = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndim;
    let mut header = Vec::with_capacity(header_len);
    (&mut reader).take(4).read_to_end(&mut header).map_err(read_err)?;
    if header.len() < 4 {
        return Err(truncated(path, header_len as u64, header.len() as u64));
    }
    let found = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if found != magic {
        return Err(DataError::BadMagic { path: path.to_path_buf(), found, expected: magic });
    }
    (&mut reader).take(4 * ndim as u64).read_to_end(&mut header).map_err(read_err)?;
    if header.len() < header_len {
        return Err(truncated(path, header_len as u64, header.len() as u64));
    }
    let dims: Vec<usize> =
        header[4..].chunks_exact(4).map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize).collect();

    // At most 3 factors of at most 32 bits each: the product fits in u128.
    let size = dims.iter().fold(1u128, |acc, &d| acc * d as u128);
    // Callers convert every byte to an f32, so the payload must stay well inside the address space.
    if size > (isize::MAX as u128) / 4 {
        return Err(DataError::WrongDimensions {
            path: path.to_path_buf(),
            detail: format!("header dimensions {dims:?} describe {size} bytes, more than can be addressed"),
        });
    }
    let size = size as u64;
    let mut payload = Vec::new();
    (&mut reader).take(size.saturating_add(1)).read_to_end(&mut payload).map_err(read_err)?;
    let got = payload.len() as u64;
    if got < size {
        return Err(truncated(path, header_len as u64 + size, header_len as u64 + got));
    }
    if got > size {
        // Count the rest without keeping it (for gzip this decompresses but stores nothing).
        let extra = 1 + std::io::copy(&mut reader, &mut std::io::sink()).map_err(read_err)?;
        return Err(DataError::TrailingBytes { path: path.to_path_buf(), expected: header_len as u64 + size, extra });
    }
    Ok((dims, payload))
}

/// A `Truncated` error for `path`.
fn truncated(path: &Path, expected: u64, found: u64) -> DataError {
    DataError::Truncated { path: path.to_path_buf(), expected, found }
}

/// The (images, labels) paths of `split` if `dir` holds IDX files of either split.
///
/// When the other split is present but this one is not, returns the expected names so that the
/// caller reports which file is missing.
pub(crate) fn find(dir: &Path, split: Split) -> Option<(PathBuf, PathBuf)> {
    let (wanted, other) = match split {
        Split::Train => ("train", "t10k"),
        Split::Test => ("t10k", "train"),
    };
    let images = existing(dir, wanted, "images-idx3");
    let labels = existing(dir, wanted, "labels-idx1");
    if images.is_some()
        || labels.is_some()
        || existing(dir, other, "images-idx3").is_some()
        || existing(dir, other, "labels-idx1").is_some()
    {
        let canonical = |kind: &str| dir.join(format!("{wanted}-{kind}-ubyte.gz"));
        return Some((
            images.unwrap_or_else(|| canonical("images-idx3")),
            labels.unwrap_or_else(|| canonical("labels-idx1")),
        ));
    }
    None
}

/// The first existing file among `{prefix}-{kind}-ubyte[.gz]` and `{prefix}-{kind with '.'}-ubyte[.gz]`.
fn existing(dir: &Path, prefix: &str, kind: &str) -> Option<PathBuf> {
    let dotted = kind.replacen('-', ".", 1);
    [format!("{prefix}-{kind}-ubyte"), format!("{prefix}-{dotted}-ubyte")]
        .into_iter()
        .flat_map(|base| [format!("{base}.gz"), base])
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::super::tests::write;
    use super::super::{load_dir, load_dir_with};
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use proptest::prelude::*;
    use std::io::Write;

    /// Encodes an unsigned-byte IDX file.
    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Three 2x3 images with pixel values i*7 and labels 9, 0, 4.
    fn sample() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..18).map(|i| i * 7).collect();
        (idx(&[3, 2, 3], &pixels), idx(&[3], &[9, 0, 4]))
    }

    fn check_sample(ds: &Dataset, norm: &Normalization) {
        assert_eq!((ds.n, ds.shape, ds.classes), (3, [1, 2, 3], 10));
        assert_eq!(ds.labels, vec![9, 0, 4]);
        assert_eq!(&ds.normalization, norm);
        for (i, &x) in ds.images.iter().enumerate() {
            let want = ((i * 7) as f32 / 255.0 - norm.mean[0]) / norm.std[0];
            assert!((x - want).abs() < 1e-6, "pixel {i}: {x} vs {want}");
        }
    }

    #[test]
    fn raw_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, labels) = sample();
        let ip = write(tmp.path(), "train-images-idx3-ubyte", &images);
        let lp = write(tmp.path(), "train-labels-idx1-ubyte", &labels);
        check_sample(&load_idx(&ip, &lp).unwrap(), &Normalization::fashion_mnist());
        check_sample(&load_idx_with(&ip, &lp, Normalization::mnist()).unwrap(), &Normalization::mnist());
        check_sample(&load_dir(tmp.path(), Split::Train).unwrap(), &Normalization::fashion_mnist());
        let ds = load_dir_with(tmp.path(), Split::Train, Some(Normalization::unit())).unwrap();
        check_sample(&ds, &Normalization::unit());
        // Train present, test missing: the test images file is named.
        let err = load_dir(tmp.path(), Split::Test).unwrap_err();
        assert!(
            matches!(&err, DataError::MissingFile { path } if path.ends_with("t10k-images-idx3-ubyte.gz")),
            "{err}"
        );
    }

    #[test]
    fn gzip_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, labels) = sample();
        write(tmp.path(), "t10k-images-idx3-ubyte.gz", &gz(&images));
        write(tmp.path(), "t10k-labels-idx1-ubyte.gz", &gz(&labels));
        check_sample(&load_dir(tmp.path(), Split::Test).unwrap(), &Normalization::fashion_mnist());
        // Mixed: gzip images, raw labels under the dotted MNIST-mirror naming.
        let tmp2 = tempfile::tempdir().unwrap();
        write(tmp2.path(), "train-images.idx3-ubyte.gz", &gz(&images));
        write(tmp2.path(), "train-labels.idx1-ubyte", &labels);
        check_sample(&load_dir(tmp2.path(), Split::Train).unwrap(), &Normalization::fashion_mnist());
        // Multi-member gzip (e.g. concatenated .gz files) is read completely.
        let mut multi = gz(&images[..10]);
        multi.extend(gz(&images[10..]));
        let ip = write(tmp.path(), "multi.gz", &multi);
        let lp = write(tmp.path(), "labels", &labels);
        check_sample(&load_idx(&ip, &lp).unwrap(), &Normalization::fashion_mnist());
    }

    /// Loads `images` and `labels` written to a fresh directory.
    fn load_bytes(images: &[u8], labels: &[u8]) -> Result<Dataset, DataError> {
        let tmp = tempfile::tempdir().unwrap();
        let ip = write(tmp.path(), "images", images);
        let lp = write(tmp.path(), "labels", labels);
        load_idx(&ip, &lp)
    }

    #[test]
    fn missing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, _) = sample();
        let ip = write(tmp.path(), "train-images-idx3-ubyte", &images);
        let err = load_idx(&ip, &tmp.path().join("labels")).unwrap_err();
        assert!(matches!(&err, DataError::MissingFile { path } if path.ends_with("labels")), "{err}");
        let err = load_dir(tmp.path(), Split::Train).unwrap_err();
        assert!(
            matches!(&err, DataError::MissingFile { path } if path.ends_with("train-labels-idx1-ubyte.gz")),
            "{err}"
        );
    }

    #[test]
    fn bad_magic() {
        let (images, labels) = sample();
        // Labels given where images are expected, and vice versa.
        let err = load_bytes(&labels, &images).unwrap_err();
        assert!(matches!(err, DataError::BadMagic { found: 0x801, expected: 0x803, .. }), "{err}");
        let err = load_bytes(&images, &images).unwrap_err();
        assert!(matches!(err, DataError::BadMagic { found: 0x803, expected: 0x801, .. }), "{err}");
        // Float data type.
        let mut float = images.clone();
        float[2] = 0x0d;
        let err = load_bytes(&float, &labels).unwrap_err();
        assert!(matches!(err, DataError::BadMagic { found: 0x0d03, .. }), "{err}");
        assert!(err.to_string().contains("0x00000d03"), "{err}");
        // Magic of a gzip-compressed file is checked after decompression.
        let err = load_bytes(&gz(b"PK\x03\x04 not idx"), &labels).unwrap_err();
        assert!(matches!(err, DataError::BadMagic { .. }), "{err}");
    }

    #[test]
    fn truncated() {
        let (images, labels) = sample();
        let err = load_bytes(&images[..images.len() - 1], &labels).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 34, found: 33, .. }), "{err}");
        let err = load_bytes(&images[..6], &labels).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 16, found: 6, .. }), "{err}");
        let err = load_bytes(&[], &labels).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 16, found: 0, .. }), "{err}");
        let err = load_bytes(&images, &gz(&labels[..labels.len() - 2])).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 11, found: 9, .. }), "{err}");
        let err = load_bytes(&images, &[labels.clone(), vec![1, 2]].concat()).unwrap_err();
        assert!(matches!(err, DataError::TrailingBytes { expected: 11, extra: 2, .. }), "{err}");
        let err = load_bytes(&gz(&[images.clone(), vec![0]].concat()), &labels).unwrap_err();
        assert!(matches!(err, DataError::TrailingBytes { .. }), "{err}");
    }

    #[test]
    fn huge_header_does_not_allocate() {
        let (_, labels) = sample();
        // About 3.3 TB claimed, a few bytes present: must fail on length, not on allocation.
        let err = load_bytes(&idx(&[u32::MAX, 28, 28], &[1, 2, 3]), &labels).unwrap_err();
        assert!(matches!(err, DataError::Truncated { found: 19, .. }), "{err}");
        let err = load_bytes(&gz(&idx(&[u32::MAX, 28, 28], &[0; 1000])), &labels).unwrap_err();
        assert!(matches!(err, DataError::Truncated { found: 1016, .. }), "{err}");
        // More than the address space.
        let err = load_bytes(&idx(&[u32::MAX; 3], &[]), &labels).unwrap_err();
        assert!(matches!(err, DataError::WrongDimensions { .. }), "{err}");
    }

    #[test]
    fn count_mismatch() {
        let (images, _) = sample();
        let err = load_bytes(&images, &idx(&[2], &[1, 2])).unwrap_err();
        assert!(matches!(err, DataError::CountMismatch { images: 3, labels: 2, .. }), "{err}");
        assert!(err.to_string().contains("3 images"), "{err}");
    }

    #[test]
    fn wrong_dimensions() {
        let (_, labels) = sample();
        let err = load_bytes(&idx(&[3, 0, 28], &[]), &labels).unwrap_err();
        assert!(matches!(err, DataError::WrongDimensions { .. }), "{err}");
    }

    #[test]
    fn label_out_of_range() {
        let (images, _) = sample();
        let err = load_bytes(&images, &idx(&[3], &[1, 10, 2])).unwrap_err();
        match err {
            DataError::LabelOutOfRange { path, index: 1, label: 10, classes: 10 } => assert!(path.ends_with("labels")),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn gzip_error() {
        let (images, labels) = sample();
        let mut corrupt = gz(&images);
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        corrupt[mid + 1] ^= 0x55;
        let err = load_bytes(&corrupt, &labels).unwrap_err();
        // Corrupting deflate data either breaks the stream or the CRC; some flips decode to other lengths.
        assert!(
            matches!(err, DataError::Gzip { .. } | DataError::Truncated { .. } | DataError::TrailingBytes { .. }),
            "{err}"
        );
        // A bad CRC over correct-length data is a gzip error.
        let mut bad_crc = gz(&images);
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        let err = load_bytes(&bad_crc, &labels).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. }), "{err}");
        assert!(err.to_string().contains("gzip error"), "{err}");
        // Only the gzip magic: a header error.
        let err = load_bytes(&[0x1f, 0x8b, 8], &labels).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. } | DataError::Truncated { .. }), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(Path::new("x"), &bytes, IMAGES_MAGIC);
            let _ = parse(Path::new("x"), &bytes, LABELS_MAGIC);
            let mut gzipped = vec![0x1f, 0x8b];
            gzipped.extend_from_slice(&bytes);
            let _ = parse(Path::new("x"), &gzipped, IMAGES_MAGIC);
        }

        #[test]
        fn random_headers_never_panic(dims in proptest::collection::vec(any::<u32>(), 3), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let file = idx(&dims, &tail);
            let _ = parse(Path::new("x"), &file, IMAGES_MAGIC);
            let _ = parse(Path::new("x"), &gz(&file), IMAGES_MAGIC);
        }

        #[test]
        fn truncated_or_flipped_files_never_panic(cut in 0usize..200, flip in 0usize..200, bit in 0u8..8) {
            let (images, labels) = sample();
            for file in [images, labels, gz(&sample().0)] {
                let mut bytes = file[..cut.min(file.len())].to_vec();
                if let Some(b) = bytes.get_mut(flip) {
                    *b ^= 1 << bit;
                }
                for magic in [IMAGES_MAGIC, LABELS_MAGIC] {
                    if let Ok((dims, payload)) = parse(Path::new("x"), &bytes, magic) {
                        prop_assert_eq!(dims.iter().product::<usize>(), payload.len());
                    }
                }
            }
        }
    }
}
