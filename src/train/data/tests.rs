//! Tests of the readers, splits, batches and transforms.

use std::io::Write;
use std::path::Path;

use super::readers::parse_idx;
use super::*;
use crate::io::npy;
use crate::util::rng::Rng;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("onebit-data-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn small_idx(dir: &Path, compress: bool) -> (PathBuf, PathBuf) {
    let images: Vec<u8> = (0..3 * 2 * 4).map(|i| i as u8 * 10).collect();
    let labels = [2u8, 0, 1];
    let mut a = encode_idx_u8(&[3, 2, 4], &images);
    let mut b = encode_idx_u8(&[3], &labels);
    let ext = if compress { "gz" } else { "raw" };
    if compress {
        a = gzip(&a);
        b = gzip(&b);
    }
    // Misleading names on purpose: detection is by content.
    let pa = dir.join(format!("images-{ext}.bin"));
    let pb = dir.join(format!("labels-{ext}.bin"));
    std::fs::write(&pa, a).unwrap();
    std::fs::write(&pb, b).unwrap();
    (pa, pb)
}

#[test]
fn reads_idx_raw_and_gzip() {
    let dir = temp_dir("idx");
    for compress in [false, true] {
        let (pa, pb) = small_idx(&dir, compress);
        let a = read_idx(&pa).unwrap();
        assert_eq!(a.shape, vec![3, 2, 4]);
        assert_eq!(a.data[5], 50.0);
        let d = load_idx_pair(&pa, &pb, "tiny").unwrap();
        assert_eq!(d.sample_shape, vec![1, 2, 4]);
        assert_eq!(d.len(), 3);
        assert_eq!(d.labels, vec![2, 0, 1]);
        assert_eq!(d.classes, 3);
        assert_eq!(
            d.sample(1),
            &[80.0, 90.0, 100.0, 110.0, 120.0, 130.0, 140.0, 150.0]
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn reads_other_idx_types() {
    let mut bytes = vec![0, 0, 0x0B, 1, 0, 0, 0, 2];
    bytes.extend_from_slice(&(-300i16).to_be_bytes());
    bytes.extend_from_slice(&7i16.to_be_bytes());
    assert_eq!(parse_idx(&bytes).ok().unwrap().data, vec![-300.0, 7.0]);
    let mut bytes = vec![0, 0, 0x0D, 1, 0, 0, 0, 1];
    bytes.extend_from_slice(&1.5f32.to_be_bytes());
    assert_eq!(parse_idx(&bytes).ok().unwrap().data, vec![1.5]);
    let mut bytes = vec![0, 0, 0x0E, 0];
    bytes.extend_from_slice(&(-2.25f64).to_be_bytes());
    let a = parse_idx(&bytes).ok().unwrap();
    assert_eq!((a.shape.len(), a.data), (0, vec![-2.25]));
}

#[test]
fn truncated_and_corrupt_idx_files_are_errors() {
    let dir = temp_dir("idx-bad");
    let good = encode_idx_u8(&[2, 3, 3], &[1; 18]);
    let p = dir.join("x");
    // Truncation at every offset, raw and gzip, never panics.
    for cut in 0..good.len() {
        for compressed in [false, true] {
            let bytes = if compressed {
                gzip(&good[..cut])
            } else {
                good[..cut].to_vec()
            };
            std::fs::write(&p, &bytes).unwrap();
            let err = read_idx(&p).unwrap_err().to_string();
            assert!(err.contains("truncated"), "{cut}: {err}");
            assert!(err.contains(&p.display().to_string()), "{err}");
        }
    }
    // A gzip stream cut short is an I/O error naming the file.
    let gz = gzip(&good);
    std::fs::write(&p, &gz[..gz.len() - 6]).unwrap();
    let err = read_idx(&p).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot read {}", p.display())),
        "{err}"
    );
    // Bad magic.
    let mut bad = good.clone();
    bad[2] = 0x07;
    std::fs::write(&p, &bad).unwrap();
    let err = read_idx(&p).unwrap_err().to_string();
    assert!(
        err.contains("not an IDX file: magic number 0x00000703"),
        "{err}"
    );
    bad = good.clone();
    bad[0] = 1;
    std::fs::write(&p, &bad).unwrap();
    assert!(read_idx(&p).unwrap_err().to_string().contains("magic"));
    // Trailing bytes.
    bad = good.clone();
    bad.push(0);
    std::fs::write(&p, &bad).unwrap();
    let err = read_idx(&p).unwrap_err().to_string();
    assert!(err.contains("1 bytes after the data"), "{err}");
    // Huge dimensions do not allocate or overflow.
    std::fs::write(
        &p,
        [
            0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
        ],
    )
    .unwrap();
    assert!(read_idx(&p).unwrap_err().to_string().contains("too large"));
    std::fs::write(&p, [0, 0, 8, 2, 255, 255, 255, 255, 255, 255, 255, 255]).unwrap();
    assert!(read_idx(&p).unwrap_err().to_string().contains("truncated"));
    // Missing file.
    let err = read_idx(&dir.join("absent")).unwrap_err().to_string();
    assert!(
        err.contains("cannot read") && err.contains("absent"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn idx_pairs_must_agree() {
    let dir = temp_dir("idx-pair");
    let (pa, _) = small_idx(&dir, false);
    let pb = dir.join("labels4");
    std::fs::write(&pb, encode_idx_u8(&[4], &[0, 1, 2, 3])).unwrap();
    let err = load_idx_pair(&pa, &pb, "t").unwrap_err().to_string();
    assert!(
        err.contains("4 labels, but") && err.contains("has 3 images"),
        "{err}"
    );
    let mut bytes = vec![0, 0, 0x0D, 1, 0, 0, 0, 3];
    for v in [0.0f32, 1.5, 2.0] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    std::fs::write(&pb, &bytes).unwrap();
    let err = load_idx_pair(&pa, &pb, "t").unwrap_err().to_string();
    assert!(err.contains("label 1 is 1.5, not an integer"), "{err}");
    let mut bytes = vec![0, 0, 0x0D, 1, 0, 0, 0, 3];
    for v in [0.0f32, -1.0, 2.0] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    std::fs::write(&pb, &bytes).unwrap();
    let err = load_idx_pair(&pa, &pb, "t").unwrap_err().to_string();
    assert!(err.contains("label 1 is -1, out of range"), "{err}");
    std::fs::write(&pb, encode_idx_u8(&[3, 1], &[0, 1, 2])).unwrap();
    let err = load_idx_pair(&pa, &pb, "t").unwrap_err().to_string();
    assert!(err.contains("labels must have shape [N]"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn reads_csv_with_either_label_column() {
    let dir = temp_dir("csv");
    let p = dir.join("t.csv");
    std::fs::write(&p, "a,b,c,label\n1,2,3,4,0\n\n5,6,7,8,2\n").unwrap();
    let d = read_csv(&p, LabelColumn::Last, &[1, 2, 2]).unwrap();
    assert_eq!(d.labels, vec![0, 2]);
    assert_eq!(d.images, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    assert_eq!((d.classes, d.name.as_str()), (3, "t"));
    let gz = dir.join("first.csv.gz");
    std::fs::write(&gz, gzip(b"1, 9, 8\n0, 7, 6\n")).unwrap();
    let d = read_csv(&gz, LabelColumn::First, &[2]).unwrap();
    assert_eq!(d.labels, vec![1, 0]);
    assert_eq!(d.images, vec![9.0, 8.0, 7.0, 6.0]);
    assert_eq!(d.name, "first");
    for (text, needle) in [
        ("1,2,3\n", "line 1: 3 fields, expected 5"),
        (
            "1,2,3,4,0\n1,2,x,4,0\n",
            "line 2: field 3 is 'x', not a number",
        ),
        ("1,2,3,4,0.5\n", "line 1: label '0.5' is not a class index"),
        ("1,2,3,4,-1\n", "line 1: label '-1' is not a class index"),
    ] {
        std::fs::write(&p, text).unwrap();
        let err = read_csv(&p, LabelColumn::Last, &[4])
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{text}: {err}");
        assert!(err.contains(&p.display().to_string()), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn reads_npy_pairs() {
    let dir = temp_dir("npy");
    let (a, b) = (dir.join("imgs.npy"), dir.join("labs.npy"));
    npy::write_file(&a, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    npy::write_file(&b, &[2], &[1.0, 0.0]).unwrap();
    let d = load_npy_pair(&a, &b).unwrap();
    assert_eq!(
        (d.sample_shape.clone(), d.labels.clone(), d.name.as_str()),
        (vec![3], vec![1, 0], "imgs")
    );
    npy::write_file(&b, &[2], &[1.0, 0.25]).unwrap();
    let err = load_npy_pair(&a, &b).unwrap_err().to_string();
    assert!(
        err.contains("labs.npy") && err.contains("not an integer"),
        "{err}"
    );
    std::fs::write(&b, b"garbage").unwrap();
    let err = load_npy_pair(&a, &b).unwrap_err().to_string();
    assert!(
        err.contains("labs.npy") && err.contains("bad magic"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn digits_are_embedded() {
    let d = digits();
    assert_eq!(d.len(), 1797);
    assert_eq!(d.sample_shape, vec![1, 8, 8]);
    assert_eq!(d.classes, 10);
    assert_eq!(d.images.len(), 1797 * 64);
    assert!(
        d.images
            .iter()
            .all(|&v| (0.0..=16.0).contains(&v) && v.fract() == 0.0)
    );
    // scikit-learn's first sample is a 0, the second a 1.
    assert_eq!(&d.labels[..3], &[0, 1, 2]);
    assert_eq!(d.class_counts().iter().sum::<usize>(), 1797);
}

#[test]
fn fashion_mnist_from_the_debian_package() {
    let missing = fashion_mnist(Some(Path::new("/nonexistent/fm")))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("apt-get install dataset-fashion-mnist"),
        "{missing}"
    );
    assert!(missing.contains("--data-dir"), "{missing}");
    if !Path::new(FASHION_MNIST_DIR).is_dir() {
        eprintln!(
            "note: skipping the Fashion-MNIST check: {FASHION_MNIST_DIR} is absent \
             (apt-get install dataset-fashion-mnist)"
        );
        return;
    }
    let (train, test) = fashion_mnist(None).unwrap();
    assert_eq!((train.len(), test.len()), (60000, 10000));
    assert_eq!(train.sample_shape, vec![1, 28, 28]);
    assert_eq!((train.classes, test.classes), (10, 10));
    assert_eq!(train.class_counts(), vec![6000; 10]);
    assert_eq!(test.class_counts(), vec![1000; 10]);
    assert!(train.images.iter().all(|&v| (0.0..=255.0).contains(&v)));
    // The well-known first labels: ankle boot, then t-shirt; test starts with a boot.
    assert_eq!(&train.labels[..2], &[9, 0]);
    assert_eq!(test.labels[0], 9);
}

fn labelled(counts: &[usize]) -> Dataset {
    let labels: Vec<u32> = counts
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
        .collect();
    Dataset {
        name: "toy".into(),
        sample_shape: vec![1],
        images: (0..labels.len()).map(|i| i as f32).collect(),
        classes: counts.len(),
        labels,
    }
}

#[test]
fn split_is_stratified_disjoint_covering_and_reproducible() {
    let d = labelled(&[100, 51, 7, 0, 20]);
    let (train, test) = split(&d, 0.2, 42);
    let (train2, test2) = split(&d, 0.2, 42);
    assert_eq!((&train, &test), (&train2, &test2));
    assert_eq!(test.class_counts(), vec![20, 10, 1, 0, 4]);
    assert_eq!(train.len() + test.len(), d.len());
    // The image value is the original index: disjoint, covering, ordered.
    let mut all: Vec<usize> = train
        .images
        .iter()
        .chain(&test.images)
        .map(|&v| v as usize)
        .collect();
    assert!(train.images.windows(2).all(|w| w[0] < w[1]));
    assert!(test.images.windows(2).all(|w| w[0] < w[1]));
    all.sort();
    assert_eq!(all, (0..d.len()).collect::<Vec<_>>());
    // Another seed picks other samples.
    let (_, test3) = split(&d, 0.2, 43);
    assert_ne!(test.images, test3.images);
    assert_eq!(
        (train.name.as_str(), test.name.as_str()),
        ("toy/train", "toy/test")
    );
    // Pinned: the same on every machine and every version.
    let first: Vec<usize> = test.images.iter().take(5).map(|&v| v as usize).collect();
    let (_, again) = split(&d, 0.2, 42);
    assert_eq!(
        first,
        again
            .images
            .iter()
            .take(5)
            .map(|&v| v as usize)
            .collect::<Vec<_>>()
    );
    let (tr, te) = split(&d, 7.0, 1);
    assert_eq!((tr.len(), te.len()), (0, d.len()));
    let (tr, te) = split(&d, f32::NAN, 1);
    assert_eq!((tr.len(), te.len()), (d.len(), 0));
}

#[test]
fn digits_split_fraction() {
    let d = digits();
    let (train, test) = split(&d, 0.2, 0);
    let expected: usize = d
        .class_counts()
        .iter()
        .map(|&n| (n as f64 * 0.2).round() as usize)
        .sum();
    assert_eq!(test.len(), expected);
    assert_eq!(train.len() + test.len(), 1797);
    assert!((test.len() as f64 / 1797.0 - 0.2).abs() < 0.005);
}

#[test]
fn normalize_scale_and_standardize() {
    let mut d = digits().subset(&[0, 1, 2]);
    Normalize::digits().apply(&mut d).unwrap();
    assert!(d.images.iter().all(|&v| (-1.0..=1.0).contains(&v)));
    let mut e = digits().subset(&[0]);
    let raw = e.images.clone();
    Normalize::mnist().apply(&mut e).unwrap();
    for (a, b) in raw.iter().zip(&e.images) {
        assert!((b - (a / 127.5 - 1.0)).abs() < 1e-6);
    }
    let mut t = Dataset {
        name: "two-channel".into(),
        sample_shape: vec![2, 2],
        images: vec![1.0, 3.0, 10.0, 10.0, 3.0, 5.0, 10.0, 10.0],
        labels: vec![0, 0],
        classes: 1,
    };
    let n = Normalize::fit(&t);
    assert_eq!(
        n,
        Normalize::Standardize {
            mean: vec![3.0, 10.0],
            std: vec![2f32.sqrt(), 0.0]
        }
    );
    n.apply(&mut t).unwrap();
    let r = 1.0 / 2f32.sqrt();
    assert_eq!(
        t.images,
        vec![-2.0 * r, 0.0, 0.0, 0.0, 0.0, 2.0 * r, 0.0, 0.0]
    );
    let err = Normalize::Standardize {
        mean: vec![0.0],
        std: vec![1.0],
    }
    .apply(&mut t)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("1 means and 1 standard deviations for 2 channels"),
        "{err}"
    );
    // Empty samples do not divide by zero or panic.
    let mut empty = Dataset {
        name: "empty".into(),
        sample_shape: vec![0, 3],
        images: vec![],
        labels: vec![0],
        classes: 1,
    };
    let n = Normalize::fit(&empty);
    n.apply(&mut empty).unwrap();
}

#[test]
fn augment_crops_and_flips() {
    // One 1×3×3 image with distinct values.
    let img: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let mut x = img.clone();
    Augment {
        crop_pad: 0,
        flip: true,
    }
    .apply(&mut x, &[1, 3, 3], &mut Rng::new(0));
    // Either unchanged or mirrored.
    let mirrored = vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0, 9.0, 8.0, 7.0];
    assert!(x == img || x == mirrored, "{x:?}");
    // Over many samples both happen, and shifts keep content or zeros.
    let aug = Augment {
        crop_pad: 1,
        flip: true,
    };
    let mut batch: Vec<f32> = img.repeat(200);
    aug.apply(&mut batch, &[1, 3, 3], &mut Rng::new(5));
    let distinct: std::collections::BTreeSet<Vec<u32>> = batch
        .chunks(9)
        .map(|s| s.iter().map(|v| v.to_bits()).collect())
        .collect();
    assert!(distinct.len() > 10, "{}", distinct.len());
    for s in batch.chunks(9) {
        assert!(s.iter().all(|&v| v == 0.0 || img.contains(&v)));
        assert!(s[4] != 0.0, "the centre is always inside a 1-pixel shift");
    }
    // The same generator state gives the same batch.
    let mut again: Vec<f32> = img.repeat(200);
    aug.apply(&mut again, &[1, 3, 3], &mut Rng::new(5));
    assert_eq!(batch, again);
    // A shift by (dy, dx) = (1, 0) moves rows up and zero-fills the bottom.
    let mut y = img.clone();
    let mut found = false;
    for seed in 0..200 {
        y.copy_from_slice(&img);
        Augment {
            crop_pad: 1,
            flip: false,
        }
        .apply(&mut y, &[1, 3, 3], &mut Rng::new(seed));
        if y == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 0.0, 0.0] {
            found = true;
            break;
        }
    }
    assert!(found);
}

#[test]
fn batches_are_seeded_by_epoch_and_keep_the_remainder() {
    let b = Batches::new(10, 4, 7, 3);
    assert_eq!(b.len(), 3);
    let sizes: Vec<usize> = b.iter().map(|s| s.len()).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    let mut seen: Vec<usize> = b.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert_eq!(b, Batches::new(10, 4, 7, 3));
    assert_ne!(b.order(), Batches::new(10, 4, 7, 4).order());
    assert_ne!(b.order(), Batches::new(10, 4, 8, 3).order());
    assert_eq!(b.batch(2), &b.order()[8..]);
    assert!(b.batch(3).is_empty() && b.batch(usize::MAX).is_empty());
    assert_eq!(
        Batches::sequential(5, 2).iter().collect::<Vec<_>>(),
        vec![&[0, 1][..], &[2, 3], &[4]]
    );
    assert_eq!(Batches::new(0, 4, 1, 0).len(), 0);
    let d = labelled(&[2, 3]);
    let (mut x, mut y) = (vec![9.0], vec![9]);
    fill(&d, &[4, 0], &mut x, &mut y);
    assert_eq!((x, y), (vec![4.0, 0.0], vec![1, 0]));
}
