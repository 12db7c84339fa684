//! The standalone XOR-popcount kernel (`codegen::kernels::wide::standalone`)
//! against a plain-Rust oracle, on awkward sizes: rows of A that leave a
//! partial tile, W row counts that are not multiples of 16 or of the 4-block
//! tile, one word and many words per row.

use onebit::codegen::kernels::wide::standalone::XorPopcount;
use onebit::util::rng::Rng;

fn oracle(a: &[u64], w: &[u64], words: usize) -> Vec<i32> {
    let (m, n) = (a.len() / words, w.len() / words);
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let row_a = &a[i * words..][..words];
            let row_w = &w[j * words..][..words];
            out.push(
                row_a
                    .iter()
                    .zip(row_w)
                    .map(|(x, y)| (x ^ y).count_ones() as i32)
                    .sum(),
            );
        }
    }
    out
}

#[test]
fn popcounts_and_dots_match_the_oracle() {
    if !XorPopcount::available() {
        eprintln!("host without AVX-512 VPOPCNTDQ; skipping");
        assert!(XorPopcount::new(4, 16).is_err());
        return;
    }
    let mut r = Rng::new(42);
    for (m, n, words) in [
        (1, 1, 1),
        (6, 16, 1),
        (7, 17, 2),
        (13, 64, 9),
        (5, 80, 3),
        (31, 200, 16),
        (2, 130, 72),
    ] {
        let a: Vec<u64> = (0..m * words).map(|_| r.next_u64()).collect();
        let w: Vec<u64> = (0..n * words).map(|_| r.next_u64()).collect();
        let kernel = XorPopcount::new(words, n).unwrap();
        let packed = kernel.pack(&w).unwrap();
        let mut got = vec![-1; m * n];
        kernel.popcounts(&a, &packed, &mut got).unwrap();
        let expected = oracle(&a, &w, words);
        assert_eq!(got, expected, "m {m} n {n} words {words}");
        // Dots of rows with k valid bits (the rest zero in A and W).
        let k = 64 * words - 5;
        let mask = |v: &mut Vec<u64>| {
            for row in v.chunks_exact_mut(words) {
                row[words - 1] &= u64::MAX >> 5;
            }
        };
        let (mut a, mut w) = (a, w);
        mask(&mut a);
        mask(&mut w);
        let packed = kernel.pack(&w).unwrap();
        kernel.dots(&a, &packed, k, &mut got).unwrap();
        let expected: Vec<i32> = oracle(&a, &w, words)
            .into_iter()
            .map(|c| k as i32 - 2 * c)
            .collect();
        assert_eq!(got, expected, "dots m {m} n {n} words {words}");
    }
}

#[test]
fn misshapen_operands_are_errors() {
    if !XorPopcount::available() {
        return;
    }
    let kernel = XorPopcount::new(2, 16).unwrap();
    let e = kernel.pack(&[0; 31]).unwrap_err().to_string();
    assert!(
        e.contains("31 words") && e.contains("16 rows × 2 words"),
        "{e}"
    );
    let packed = kernel.pack(&[0; 32]).unwrap();
    let e = kernel
        .popcounts(&[0; 5], &packed, &mut [0; 32])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a multiple of 2"), "{e}");
    let e = kernel
        .popcounts(&[0; 4], &packed, &mut [0; 31])
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected 2 × 16"), "{e}");
    let other = XorPopcount::new(2, 32).unwrap();
    let e = other
        .popcounts(&[0; 4], &packed, &mut [0; 64])
        .unwrap_err()
        .to_string();
    assert!(e.contains("was not packed for"), "{e}");
    assert!(XorPopcount::new(0, 16).is_err());
}
