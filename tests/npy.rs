//! Tests for the `.npy` reader and writer in `onebit::io::npy`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use onebit::io::npy::{self, Array, NpyError};

/// Builds a `.npy` file by hand from a header text and raw data bytes.
fn npy_bytes(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    let header = header.as_bytes();
    if major == 1 {
        out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    } else {
        out.extend_from_slice(&u32::try_from(header.len()).unwrap().to_le_bytes());
    }
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// A NumPy-style header dict.
fn dict(descr: &str, fortran_order: bool, shape: &str) -> String {
    let order = if fortran_order { "True" } else { "False" };
    format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}\n")
}

fn f32_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn read_ok(bytes: &[u8]) -> Array {
    match npy::read(bytes) {
        Ok(array) => array,
        Err(e) => panic!("expected a valid file, got error: {e}"),
    }
}

fn read_err(bytes: &[u8]) -> String {
    match npy::read(bytes) {
        Ok(array) => panic!("expected an error, got {array:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_bits_eq(actual: &[f32], expected: &[f32]) {
    let a: Vec<u32> = actual.iter().map(|v| v.to_bits()).collect();
    let e: Vec<u32> = expected.iter().map(|v| v.to_bits()).collect();
    assert_eq!(a, e, "actual {actual:?}, expected {expected:?}");
}

/// A fresh, empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "onebit-npy-{tag}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// Writing

#[test]
fn round_trip_various_shapes() {
    let special = [
        0.0,
        -0.0,
        1.5,
        -3.25,
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-45,
    ];
    let shapes: &[&[usize]] = &[
        &[],
        &[0],
        &[1],
        &[10],
        &[2, 5],
        &[5, 2],
        &[2, 0, 4],
        &[1, 1, 1, 10],
        &[2, 1, 5],
    ];
    for &shape in shapes {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| special[i % special.len()]).collect();
        let bytes = npy::write(shape, &data);
        let array = read_ok(&bytes);
        assert_eq!(array.shape, shape);
        assert_bits_eq(&array.data, &data);
    }
}

#[test]
fn write_layout_matches_numpy_conventions() {
    for (shape, shape_text) in [
        (&[][..], "()"),
        (&[3][..], "(3,)"),
        (&[2, 3][..], "(2, 3)"),
        (&[4, 0, 1][..], "(4, 0, 1)"),
    ] {
        let n: usize = shape.iter().product();
        let data = vec![1.0f32; n];
        let bytes = npy::write(shape, &data);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        let data_start = 10 + header_len;
        assert_eq!(data_start % 64, 0, "data must be 64-byte aligned");
        assert_eq!(bytes.len(), data_start + 4 * n);
        let header = std::str::from_utf8(&bytes[10..data_start]).unwrap();
        assert!(header.ends_with('\n'));
        let expected =
            format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
        assert_eq!(header.trim_end_matches([' ', '\n']), expected);
        assert!(
            header[expected.len()..header.len() - 1]
                .bytes()
                .all(|b| b == b' ')
        );
        assert_eq!(&bytes[data_start..], f32_le(&data).as_slice());
    }
}

#[test]
fn write_falls_back_to_version_2_for_huge_headers() {
    let shape = vec![1usize; 30_000];
    let bytes = npy::write(&shape, &[2.5]);
    assert_eq!(&bytes[..8], b"\x93NUMPY\x02\x00");
    let header_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    assert_eq!((12 + header_len) % 64, 0);
    let array = read_ok(&bytes);
    assert_eq!(array.shape, shape);
    assert_eq!(array.data, [2.5]);
}

#[test]
#[should_panic(expected = "shape [2, 3] has 6 elements, but 5 values were given")]
fn write_panics_on_shape_mismatch() {
    let _ = npy::write(&[2, 3], &[0.0; 5]);
}

#[test]
fn file_round_trip_and_errors_name_the_path() {
    let dir = temp_dir("files");
    let path = dir.join("a.npy");
    npy::write_file(&path, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let array = npy::read_file(&path).unwrap();
    assert_eq!(array.shape, [2, 2]);
    assert_eq!(array.data, [1.0, 2.0, 3.0, 4.0]);

    let bad = dir.join("b.npy");
    let err = npy::write_file(&bad, &[2, 2], &[1.0]).unwrap_err();
    assert!(matches!(
        &err,
        NpyError::InFile { source, .. } if matches!(**source, NpyError::ShapeMismatch { .. })
    ));
    let msg = err.to_string();
    assert!(msg.contains("b.npy"), "{msg}");
    assert!(
        msg.contains("shape [2, 2] has 4 elements, but 1 values were given"),
        "{msg}"
    );
    assert!(!bad.exists());

    let missing = dir.join("missing.npy");
    let err = npy::read_file(&missing).unwrap_err();
    assert!(matches!(err, NpyError::Read { .. }));
    assert!(err.to_string().contains("missing.npy"), "{err}");

    let garbage = dir.join("garbage.npy");
    std::fs::write(&garbage, b"definitely not numpy").unwrap();
    let err = npy::read_file(&garbage).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("garbage.npy"), "{msg}");
    assert!(msg.ends_with("not a .npy file: bad magic"), "{msg}");

    let err = npy::write_file(&dir.join("no/such/dir/c.npy"), &[1], &[1.0]).unwrap_err();
    assert!(matches!(err, NpyError::Write { .. }));
    assert!(err.to_string().contains("c.npy"), "{err}");

    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// Reading hand-built files

#[test]
fn reads_versions_1_2_and_3() {
    let data = f32_le(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    for major in [1, 2, 3] {
        let bytes = npy_bytes(major, &dict("<f4", false, "(2, 3)"), &data);
        let array = read_ok(&bytes);
        assert_eq!(array.shape, [2, 3], "version {major}");
        assert_eq!(array.data, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }
}

#[test]
fn header_parser_is_tolerant() {
    let data = f32_le(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let headers = [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
        "{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
        "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}",
        "  {\n  \"descr\" : \"<f4\" ,\n\t'fortran_order' : False ,\r\n 'shape' : ( 2 , 3 , ) ,\n}  \n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': [1, (2,), {'x': None}]}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (+2, 0_3), }",
    ];
    for header in headers {
        let array = read_ok(&npy_bytes(1, header, &data));
        assert_eq!(array.shape, [2, 3], "header {header:?}");
    }
}

#[test]
fn header_text_encodings() {
    let data = f32_le(&[1.0]);
    // Version 3.0 headers are UTF-8.
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'note': 'héllo ✓'}";
    assert_eq!(read_ok(&npy_bytes(3, header, &data)).data, [1.0]);
    // Versions 1.0 and 2.0 are Latin-1: any byte is a character.
    let mut bytes = npy_bytes(
        1,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'note': '\u{7f}?'}",
        &data,
    );
    let pos = bytes.iter().position(|&b| b == b'?').unwrap();
    bytes[pos] = 0xe9;
    assert_eq!(read_ok(&bytes).data, [1.0]);
    // The same byte is invalid UTF-8 in version 3.0.
    bytes[6] = 3;
    bytes.splice(10..10, [0, 0]);
    let msg = read_err(&bytes);
    assert!(msg.contains("not valid UTF-8"), "{msg}");
}

#[test]
fn reads_all_supported_dtypes() {
    fn be<const N: usize>(items: &[[u8; N]]) -> Vec<u8> {
        items.iter().flat_map(|b| b.iter().rev().copied()).collect()
    }
    fn le<const N: usize>(items: &[[u8; N]]) -> Vec<u8> {
        items.iter().flatten().copied().collect()
    }
    let u64_max = u64::MAX as f32;
    let f2 = [
        0x3c00u16, 0xc000, 0x7c00, 0xfc00, 0x0001, 0x3555, 0x8000, 0x7bff, 0x0400,
    ];
    let f2_expected = [
        1.0,
        -2.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        2f32.powi(-24),
        0.333_251_95,
        -0.0,
        65504.0,
        2f32.powi(-14),
    ];
    let f2_items: Vec<[u8; 2]> = f2.iter().map(|v| v.to_le_bytes()).collect();
    let f4_items: Vec<[u8; 4]> = [1.5f32, -2.0, 1e-40]
        .iter()
        .map(|v| v.to_le_bytes())
        .collect();
    let f8_items: Vec<[u8; 8]> = [0.1f64, -1e300, 2.5]
        .iter()
        .map(|v| v.to_le_bytes())
        .collect();
    let f8_expected = [0.1f64 as f32, f32::NEG_INFINITY, 2.5];
    let i2_items: Vec<[u8; 2]> = [-300i16, 32767, -32768]
        .iter()
        .map(|v| v.to_le_bytes())
        .collect();
    let u2_items: Vec<[u8; 2]> = [0u16, 65535, 258].iter().map(|v| v.to_le_bytes()).collect();
    let i4_items: Vec<[u8; 4]> = [-70000i32, i32::MAX, 7]
        .iter()
        .map(|v| v.to_le_bytes())
        .collect();
    let u4_items: Vec<[u8; 4]> = [4_000_000_000u32, 1, 0]
        .iter()
        .map(|v| v.to_le_bytes())
        .collect();
    let i8_items: Vec<[u8; 8]> = [-(1i64 << 40), i64::MIN, 3]
        .iter()
        .map(|v| v.to_le_bytes())
        .collect();
    let u8_items: Vec<[u8; 8]> = [u64::MAX, 1 << 40, 9]
        .iter()
        .map(|v| v.to_le_bytes())
        .collect();

    let cases: Vec<(&str, Vec<u8>, Vec<f32>)> = vec![
        ("<f2", le(&f2_items), f2_expected.to_vec()),
        (">f2", be(&f2_items), f2_expected.to_vec()),
        ("<f4", le(&f4_items), vec![1.5, -2.0, 1e-40]),
        (">f4", be(&f4_items), vec![1.5, -2.0, 1e-40]),
        ("<f8", le(&f8_items), f8_expected.to_vec()),
        (">f8", be(&f8_items), f8_expected.to_vec()),
        ("|u1", vec![0, 1, 255], vec![0.0, 1.0, 255.0]),
        ("<u1", vec![0, 1, 255], vec![0.0, 1.0, 255.0]),
        ("|i1", vec![0x80, 0x7f, 0xff], vec![-128.0, 127.0, -1.0]),
        ("<i2", le(&i2_items), vec![-300.0, 32767.0, -32768.0]),
        (">i2", be(&i2_items), vec![-300.0, 32767.0, -32768.0]),
        ("<u2", le(&u2_items), vec![0.0, 65535.0, 258.0]),
        (">u2", be(&u2_items), vec![0.0, 65535.0, 258.0]),
        ("<i4", le(&i4_items), vec![-70000.0, i32::MAX as f32, 7.0]),
        (">i4", be(&i4_items), vec![-70000.0, i32::MAX as f32, 7.0]),
        ("<u4", le(&u4_items), vec![4e9, 1.0, 0.0]),
        (">u4", be(&u4_items), vec![4e9, 1.0, 0.0]),
        (
            "<i8",
            le(&i8_items),
            vec![-(2f32.powi(40)), i64::MIN as f32, 3.0],
        ),
        (
            ">i8",
            be(&i8_items),
            vec![-(2f32.powi(40)), i64::MIN as f32, 3.0],
        ),
        ("<u8", le(&u8_items), vec![u64_max, 2f32.powi(40), 9.0]),
        (">u8", be(&u8_items), vec![u64_max, 2f32.powi(40), 9.0]),
        ("|b1", vec![0, 1, 2], vec![0.0, 1.0, 1.0]),
    ];
    for (descr, data, expected) in cases {
        let shape = format!("({},)", expected.len());
        let bytes = npy_bytes(1, &dict(descr, false, &shape), &data);
        let array = read_ok(&bytes);
        assert_eq!(array.shape, [expected.len()], "{descr}");
        assert_bits_eq(&array.data, &expected);
    }

    // NaN stays NaN through every float width.
    for (descr, data) in [
        ("<f2", 0x7e00u16.to_le_bytes().to_vec()),
        ("<f4", f32::NAN.to_le_bytes().to_vec()),
        (">f8", f64::NAN.to_be_bytes().to_vec()),
    ] {
        let array = read_ok(&npy_bytes(1, &dict(descr, false, "(1,)"), &data));
        assert!(array.data[0].is_nan(), "{descr}");
    }
}

#[test]
fn scalar_and_empty_shapes() {
    let scalar = read_ok(&npy_bytes(
        1,
        &dict("<f8", false, "()"),
        &2.5f64.to_le_bytes(),
    ));
    assert_eq!(scalar.shape, Vec::<usize>::new());
    assert_eq!(scalar.data, [2.5]);

    let msg = read_err(&npy_bytes(1, &dict("<f8", false, "()"), &[]));
    assert_eq!(msg, "data is 0 bytes, but shape [] of <f8 needs 8");

    for (shape, dims) in [
        ("(0,)", vec![0]),
        ("(2, 0)", vec![2, 0]),
        ("(0, 0, 7)", vec![0, 0, 7]),
    ] {
        let array = read_ok(&npy_bytes(1, &dict("<i4", false, shape), &[]));
        assert_eq!(array.shape, dims);
        assert!(array.data.is_empty());
    }
    let msg = read_err(&npy_bytes(1, &dict("<f4", false, "(0,)"), &[0; 4]));
    assert_eq!(msg, "data is 4 bytes, but shape [0] of <f4 needs 0");
}

#[test]
fn fortran_order_only_for_rank_at_most_one() {
    let data = f32_le(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let err = npy::read(&npy_bytes(1, &dict("<f4", true, "(2, 3)"), &data)).unwrap_err();
    assert!(matches!(&err, NpyError::FortranOrder { shape } if shape == &[2, 3]));
    assert!(err.to_string().contains("fortran_order"), "{err}");

    let array = read_ok(&npy_bytes(1, &dict("<f4", true, "(6,)"), &data));
    assert_eq!(array.data, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let array = read_ok(&npy_bytes(1, &dict("<f4", true, "()"), &data[..4]));
    assert_eq!(array.data, [1.0]);
}

// ---------------------------------------------------------------------------
// Errors

#[test]
fn error_messages() {
    let f4 = |shape: &str, data: &[u8]| npy_bytes(1, &dict("<f4", false, shape), data);

    assert_eq!(read_err(b""), "not a .npy file: bad magic");
    assert_eq!(
        read_err(b"PK\x03\x04 a zip file"),
        "not a .npy file: bad magic"
    );
    assert_eq!(
        read_err(b"\x93NUM"),
        "truncated .npy file: the magic string needs 6 bytes, but the file has only 4"
    );
    assert_eq!(
        read_err(&npy_bytes(1, &dict("<c8", false, "(2,)"), &[0; 16])),
        "unsupported dtype '<c8' (expected a float, integer or bool dtype)"
    );
    assert_eq!(
        read_err(&f4("(2, 3)", &[0; 20])),
        "data is 20 bytes, but shape [2, 3] of <f4 needs 24"
    );
    assert_eq!(
        read_err(&f4("(2, 3)", &[0; 28])),
        "data is 28 bytes, but shape [2, 3] of <f4 needs 24"
    );

    let mut bad_version = f4("(1,)", &[0; 4]);
    bad_version[6] = 4;
    assert_eq!(
        read_err(&bad_version),
        "unsupported .npy format version 4.0 (expected 1.0, 2.0 or 3.0)"
    );
    bad_version[6] = 1;
    bad_version[7] = 1;
    assert!(read_err(&bad_version).contains("version 1.1"));

    let mut long_header = f4("(1,)", &[0; 4]);
    long_header[8] = 0xff;
    long_header[9] = 0xff;
    assert_eq!(
        read_err(&long_header),
        format!(
            "truncated .npy file: the header needs {} bytes, but the file has only {}",
            10 + 0xffff,
            long_header.len()
        )
    );
    let mut huge_v2 = npy_bytes(2, &dict("<f4", false, "(1,)"), &[0; 4]);
    huge_v2[8..12].copy_from_slice(&[0xff; 4]);
    assert!(read_err(&huge_v2).starts_with("truncated .npy file: the header needs"));

    let err = npy::read(&npy_bytes(1, &dict("|O", false, "(2,)"), &[0; 16])).unwrap_err();
    assert!(matches!(err, NpyError::ObjectDtype(_)), "{err}");
    assert!(err.to_string().contains("pickled Python objects"), "{err}");

    let structured =
        "{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (2,), }";
    let err = npy::read(&npy_bytes(1, structured, &[0; 16])).unwrap_err();
    assert!(matches!(err, NpyError::StructuredDtype(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "unsupported structured dtype [('a', '<f4'), ('b', '<i4')] \
         (expected a plain float, integer or bool dtype)"
    );

    for descr in [
        "<c16", "<U5", "|S3", "|V8", "<M8[ns]", "<m8[s]", "<f16", "<i3", "<f", "float32", "", "<",
        "<b2", "<u16",
    ] {
        let err = npy::read(&npy_bytes(1, &dict(descr, false, "(1,)"), &[0; 16])).unwrap_err();
        assert!(
            matches!(err, NpyError::UnsupportedDtype(_)),
            "{descr}: {err}"
        );
    }
}

#[test]
fn huge_shapes_are_rejected_without_allocating() {
    let cases = [
        "(4611686018427387904, 4611686018427387904)",
        "(18446744073709551615,)",
        "(1152921504606846976,)", // 2^60 elements of 8 bytes overflows
        "(0, 4611686018427387904, 4611686018427387904)", // like NumPy: too big even if empty
        "(3, 3074457345618258603)",
    ];
    for shape in cases {
        let err = npy::read(&npy_bytes(1, &dict("<f8", false, shape), &[0; 8])).unwrap_err();
        assert!(matches!(err, NpyError::TooLarge { .. }), "{shape}: {err}");
        assert!(err.to_string().contains("too large"), "{err}");
    }
    // Found by fuzzing: an empty u1 array whose shape fits with 1-byte items
    // but not as f32, the type every array is converted to. Reading it would
    // give an array that `npy::write` writes and `npy::read` then refuses.
    let shape = "(0, 74856906, 52306817183)";
    let err = npy::read(&npy_bytes(1, &dict("|u1", false, shape), &[])).unwrap_err();
    assert!(matches!(err, NpyError::TooLarge { .. }), "{shape}: {err}");
    // Big but addressable shapes fail on the data length, without allocating.
    let err = npy::read(&npy_bytes(
        1,
        &dict("|u1", false, "(1000000000000,)"),
        &[0; 8],
    ));
    assert_eq!(
        err.unwrap_err().to_string(),
        "data is 8 bytes, but shape [1000000000000] of |u1 needs 1000000000000"
    );
    for shape in [
        "(18446744073709551616,)",
        "(99999999999999999999999999999999999999999999999999,)",
        "(-1,)",
        "(2, -3)",
    ] {
        let msg = read_err(&npy_bytes(1, &dict("<f4", false, shape), &[]));
        assert!(msg.starts_with("malformed .npy header: "), "{shape}: {msg}");
    }
}

#[test]
fn malformed_headers() {
    let data = f32_le(&[0.0; 3]);
    let cases = [
        ("", "expected the header to be a dict"),
        ("   ", "expected the header to be a dict"),
        ("['descr', '<f4']", "expected the header to be a dict"),
        (
            "{'descr': '<f4', 'fortran_order': False}",
            "missing key 'shape'",
        ),
        (
            "{'shape': (3,), 'fortran_order': False}",
            "missing key 'descr'",
        ),
        (
            "{'descr': '<f4', 'shape': (3,)}",
            "missing key 'fortran_order'",
        ),
        (
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,)}",
            "duplicate key 'descr'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3)}",
            "'shape' must be a tuple",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': [3]}",
            "'shape' must be a tuple",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': ('3',)}",
            "must be integers",
        ),
        (
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,)}",
            "True or False",
        ),
        (
            "{'descr': 4, 'fortran_order': False, 'shape': (3,)}",
            "'descr' must be a string",
        ),
        (
            "{'descr': '<f4, 'fortran_order': False, 'shape': (3,)}",
            "expected",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,)",
            "expected ',' or '}'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,)} x",
            "unexpected text",
        ),
        (
            "{'descr': '<f4', 'fortran_order': false, 'shape': (3,)}",
            "expected True, False",
        ),
        (
            "{'descr': '<f4' 'fortran_order': False, 'shape': (3,)}",
            "expected ',' or '}'",
        ),
        (
            "{descr: '<f4', 'fortran_order': False, 'shape': (3,)}",
            "expected a string key",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,,)}",
            "expected a value",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3 4)}",
            "expected ',' or ')'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-,)}",
            "expected digits",
        ),
        ("{'descr': '<f4\\", "unterminated string"),
    ];
    for (header, expected) in cases {
        let msg = read_err(&npy_bytes(1, header, &data));
        assert!(
            msg.starts_with("malformed .npy header: "),
            "{header:?}: {msg}"
        );
        assert!(msg.contains(expected), "{header:?}: {msg}");
    }

    // Deep nesting is an error, not a stack overflow.
    let deep = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': {}}}",
        "(".repeat(50_000)
    );
    let msg = read_err(&npy_bytes(2, &deep, &data));
    assert!(msg.contains("too deeply nested"), "{msg}");
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    assert!(npy::read(&npy_bytes(2, &deep, &data)).is_err());
}

// ---------------------------------------------------------------------------
// Robustness

/// A tiny xorshift64 generator, so that the tests need no dependencies.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn sample_files() -> Vec<Vec<u8>> {
    vec![
        npy::write(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        npy::write(&[], &[7.0]),
        npy::write(&[0, 4], &[]),
        npy_bytes(
            2,
            &dict(">f8", false, "(2,)"),
            &[0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        npy_bytes(3, &dict("|b1", true, "(3,)"), &[1, 0, 1]),
        npy_bytes(1, &dict("<i2", false, "(1, 2)"), &[1, 0, 2, 0]),
    ]
}

/// Reads `bytes`, checking the invariants of a successful result.
fn read_checked(bytes: &[u8]) {
    match npy::read(bytes) {
        Ok(array) => {
            let n: usize = array.shape.iter().product();
            assert_eq!(array.data.len(), n, "shape {:?}", array.shape);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    for file in sample_files() {
        read_ok(&file);
        for len in 0..file.len() {
            let result = npy::read(&file[..len]);
            assert!(
                result.is_err(),
                "prefix of {len}/{} bytes was accepted",
                file.len()
            );
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let files = sample_files();
    for _ in 0..20_000 {
        let mut bytes = files[rng.below(files.len())].clone();
        let header_end = bytes.len().min(100);
        for _ in 0..1 + rng.below(4) {
            // Mostly hit the magic, version, length and header.
            let pos = if rng.below(4) == 0 {
                rng.below(bytes.len())
            } else {
                rng.below(header_end)
            };
            bytes[pos] = match rng.below(4) {
                0 => rng.next() as u8,
                1 => bytes[pos] ^ (1 << rng.below(8)),
                2 => {
                    let tokens = b"(){}[],:'\"0123456789-TFN <>|fiub\\";
                    tokens[rng.below(tokens.len())]
                }
                _ => 0xff,
            };
        }
        match rng.below(8) {
            0 => bytes.truncate(rng.below(bytes.len() + 1)),
            1 => bytes.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
            _ => {}
        }
        read_checked(&bytes);
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = XorShift(12345);
    for i in 0..5_000 {
        let len = rng.below(200);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 {
            // A valid prefix, so the garbage reaches the header parser.
            let mut prefix = b"\x93NUMPY".to_vec();
            prefix.extend_from_slice(&[1 + rng.below(3) as u8, 0]);
            let header_len = len as u32;
            prefix
                .extend_from_slice(&header_len.to_le_bytes()[..if prefix[6] == 1 { 2 } else { 4 }]);
            prefix.append(&mut bytes);
            bytes = prefix;
        }
        read_checked(&bytes);
    }
}

// ---------------------------------------------------------------------------
// Interoperability with NumPy (skipped when it is not installed)

#[test]
fn numpy_interop() {
    let python = std::env::var("ONEBIT_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let has_numpy = Command::new(&python)
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_numpy {
        eprintln!("note: skipping numpy_interop: `{python} -c 'import numpy'` failed");
        return;
    }

    let dir = temp_dir("numpy");
    let write_script = r#"
import sys
import numpy as np
from numpy.lib import format as fmt
d = sys.argv[1]
np.save(d + '/f4.npy', np.arange(6, dtype='<f4').reshape(2, 3) / np.float32(4))
np.save(d + '/f4be.npy', np.array([1.0, -2.0], dtype='>f4'))
np.save(d + '/f8be.npy', np.array([[1.5, -2.25], [1e30, 0.1]], dtype='>f8'))
np.save(d + '/f2.npy', np.array([0.5, -1.0, 65504.0], dtype='<f2'))
np.save(d + '/i2.npy', np.array([-300, 0, 300], dtype='<i2'))
np.save(d + '/u8.npy', np.array([[0, 1], [2, 2**40]], dtype='<u8'))
np.save(d + '/b1.npy', np.array([True, False, True]))
np.save(d + '/scalar.npy', np.float32(7.5))
np.save(d + '/empty.npy', np.zeros((0, 4), dtype='<f4'))
np.save(d + '/fortran1d.npy', np.asfortranarray(np.array([1, 2, 3], dtype='<i4')))
np.save(d + '/fortran2d.npy', np.asfortranarray(np.ones((2, 3), dtype='<f4')))
np.save(d + '/complex.npy', np.zeros(2, dtype='<c8'))
np.save(d + '/record.npy', np.zeros(2, dtype=[('a', '<f4'), ('b', '<i4')]))
with open(d + '/v2.npy', 'wb') as f:
    fmt.write_array(f, np.ones((2, 2), dtype='<f4'), version=(2, 0))
with open(d + '/v3.npy', 'wb') as f:
    fmt.write_array(f, np.arange(3, dtype='<i8'), version=(3, 0))
"#;
    let status = Command::new(&python)
        .args(["-c", write_script])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "numpy failed to write the test files");

    let load = |name: &str| npy::read_file(&dir.join(name));
    let check = |name: &str, shape: &[usize], data: &[f32]| {
        let array = load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(array.shape, shape, "{name}");
        assert_bits_eq(&array.data, data);
    };
    check("f4.npy", &[2, 3], &[0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
    check("f4be.npy", &[2], &[1.0, -2.0]);
    check("f8be.npy", &[2, 2], &[1.5, -2.25, 1e30, 0.1]);
    check("f2.npy", &[3], &[0.5, -1.0, 65504.0]);
    check("i2.npy", &[3], &[-300.0, 0.0, 300.0]);
    check("u8.npy", &[2, 2], &[0.0, 1.0, 2.0, 2f32.powi(40)]);
    check("b1.npy", &[3], &[1.0, 0.0, 1.0]);
    check("scalar.npy", &[], &[7.5]);
    check("empty.npy", &[0, 4], &[]);
    check("fortran1d.npy", &[3], &[1.0, 2.0, 3.0]);
    check("v2.npy", &[2, 2], &[1.0; 4]);
    check("v3.npy", &[3], &[0.0, 1.0, 2.0]);
    let err = |name: &str| load(name).unwrap_err().to_string();
    assert!(err("fortran2d.npy").contains("fortran_order"));
    assert!(err("complex.npy").contains("unsupported dtype '<c8'"));
    assert!(err("record.npy").contains("unsupported structured dtype"));

    // NumPy reads what we write.
    let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    npy::write_file(&dir.join("ours.npy"), &[2, 3, 4], &data).unwrap();
    npy::write_file(&dir.join("ours_scalar.npy"), &[], &[-1.25]).unwrap();
    npy::write_file(&dir.join("ours_empty.npy"), &[3, 0], &[]).unwrap();
    npy::write_file(&dir.join("ours_1d.npy"), &[2], &[f32::INFINITY, -0.0]).unwrap();
    let read_script = r#"
import sys
import numpy as np
d = sys.argv[1]
a = np.load(d + '/ours.npy', allow_pickle=False)
assert a.dtype == np.dtype('<f4') and a.shape == (2, 3, 4), (a.dtype, a.shape)
assert (a.ravel() == np.arange(24, dtype=np.float32) * np.float32(0.5) - np.float32(3)).all(), a
m = np.load(d + '/ours.npy', mmap_mode='r')
assert (m == a).all()
s = np.load(d + '/ours_scalar.npy')
assert s.shape == () and s.dtype == np.float32 and s == -1.25, s
e = np.load(d + '/ours_empty.npy')
assert e.shape == (3, 0) and e.dtype == np.float32, e
o = np.load(d + '/ours_1d.npy')
assert o.shape == (2,) and o[0] == np.inf and o[1] == 0 and np.signbit(o[1]), o
print('ok')
"#;
    let out = Command::new(&python)
        .args(["-c", read_script])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "numpy could not read our files: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::remove_dir_all(&dir).unwrap();
}
