//! The command line end to end: exit statuses (0 success, 1 bad model or
//! data, 2 bad usage), messages that name the file and what was expected,
//! and no panic on any of it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn onebit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onebit"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the onebit binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `onebit args`, checks the exit status and that nothing panicked, and
/// returns (stdout, stderr).
fn expect(status: i32, args: &[&str]) -> (String, String) {
    let out = onebit(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(status),
        "onebit {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{stderr}"
    );
    (stdout, stderr)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("onebit-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn help_explains_every_command() {
    let (stdout, _) = expect(0, &["--help"]);
    for command in ["check", "ir", "init", "run"] {
        assert!(
            stdout.contains(command),
            "--help does not mention `{command}`:\n{stdout}"
        );
    }
}

#[test]
fn bad_usage_exits_2() {
    expect(2, &[]);
    expect(2, &["frobnicate"]);
    expect(2, &["check"]);
    expect(2, &["ir", "examples/digits_cnn.bnn", "--format", "yaml"]);
}

#[test]
fn check_prints_the_layer_table() {
    let (stdout, _) = expect(0, &["check", "examples/digits_cnn.bnn"]);
    insta::assert_snapshot!(stdout);
}

#[test]
fn bad_model_exits_1_with_a_located_error() {
    let (_, stderr) = expect(1, &["check", "tests/bad/unknown_op.bnn"]);
    assert!(stderr.contains("tests/bad/unknown_op.bnn:"), "{stderr}");
    assert!(stderr.contains("unknown op"), "{stderr}");
    let (_, stderr) = expect(1, &["check", "no/such/model.bnn"]);
    assert!(stderr.contains("no/such/model.bnn"), "{stderr}");
}

#[test]
fn ir_prints_text_json_and_dot() {
    let (text_ir, _) = expect(0, &["ir", "examples/tiny_search.bnn"]);
    let reparsed = onebit::text::parse_str(&text_ir).expect("printed IR parses");
    let original =
        onebit::text::parse("x", &std::fs::read("examples/tiny_search.bnn").unwrap()).unwrap();
    original.same_as(&reparsed).unwrap();
    let (json, _) = expect(0, &["ir", "examples/tiny_search.bnn", "--format", "json"]);
    let from_json = onebit::ir::json::from_json(&json).expect("JSON IR loads");
    original.same_as(&from_json).unwrap();
    let (dot, _) = expect(0, &["ir", "examples/tiny_search.bnn", "--format", "dot"]);
    assert!(dot.starts_with("digraph \"tiny_search\" {"), "{dot}");
    assert_eq!(
        dot.matches(" -> ").count(),
        original
            .node_ids()
            .map(|id| original.operands(id).len())
            .sum::<usize>()
    );
}

#[test]
fn init_then_run_and_data_errors() {
    let dir = scratch("run");
    let weights = dir.join("w.safetensors");
    let w = weights.to_str().unwrap();
    expect(
        0,
        &["init", "examples/mlp_digits.bnn", "-o", w, "--seed", "4"],
    );

    // A batch of 3 flattened digits.
    let x = dir.join("x.npy");
    let data: Vec<f32> = (0..3 * 64).map(|i| (i % 17) as f32).collect();
    onebit::io::npy::write_file(&x, &[3, 64], &data).unwrap();
    let y = dir.join("y.npy");
    let args = [
        "run",
        "examples/mlp_digits.bnn",
        "--weights",
        w,
        "--input",
        x.to_str().unwrap(),
        "-o",
        y.to_str().unwrap(),
        "--engine",
        "interp",
    ];
    expect(0, &args);
    let out = onebit::io::npy::read_file(&y).unwrap();
    assert_eq!(out.shape, [3, 10]);

    // The wrong input shape names the input and both shapes.
    let bad = dir.join("bad.npy");
    onebit::io::npy::write_file(&bad, &[3, 8, 8], &data).unwrap();
    let (_, stderr) = expect(
        1,
        &[
            "run",
            "examples/mlp_digits.bnn",
            "--weights",
            w,
            "--input",
            bad.to_str().unwrap(),
            "--engine",
            "interp",
        ],
    );
    assert!(
        stderr.contains("input `x` must be [N, 64], found [3, 8, 8]"),
        "{stderr}"
    );

    // Weights of another model: every missing and extra parameter in one error.
    let (_, stderr) = expect(
        1,
        &[
            "run",
            "examples/digits_cnn.bnn",
            "--weights",
            w,
            "--input",
            x.to_str().unwrap(),
            "--engine",
            "interp",
        ],
    );
    assert!(stderr.contains("missing    c1.weight"), "{stderr}");
    assert!(stderr.contains("extra      fc1.weight"), "{stderr}");

    // Not a .npy file.
    let junk = dir.join("junk.npy");
    std::fs::write(&junk, b"hello").unwrap();
    let (_, stderr) = expect(
        1,
        &[
            "run",
            "examples/mlp_digits.bnn",
            "--seed",
            "1",
            "--input",
            junk.to_str().unwrap(),
            "--engine",
            "interp",
        ],
    );
    assert!(stderr.contains("junk.npy"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_reports_accuracy_on_the_embedded_digits() {
    let (stdout, _) = expect(
        0,
        &[
            "run",
            "examples/digits_cnn.bnn",
            "--seed",
            "1",
            "--input",
            "data/digits/images.npy",
            "--labels",
            "data/digits/labels.npy",
            "--engine",
            "interp",
        ],
    );
    assert!(
        stdout.contains("accuracy: ") && stdout.contains("/1797 = "),
        "{stdout}"
    );
    assert!(stdout.contains("y: [1797, 10]"), "{stdout}");
}

#[test]
fn passes_fold_the_digits_cnn_into_thresholds() {
    let (stdout, _) = expect(
        0,
        &["check", "examples/digits_cnn.bnn", "--passes", "default"],
    );
    assert!(stdout.contains("bconv2d threshold packed"), "{stdout}");
    assert!(
        stdout.contains("real ops between binary layers: none"),
        "{stdout}"
    );
    let (ir, _) = expect(0, &["ir", "examples/digits_cnn.bnn", "--passes", "default"]);
    assert!(ir.contains("output=threshold, weights=packed"), "{ir}");
    onebit::text::parse_str(&ir).expect("the optimized IR is a valid model file");
    let (all, _) = expect(
        0,
        &[
            "ir",
            "examples/digits_cnn.bnn",
            "--passes",
            "default",
            "--print-after",
            "all",
        ],
    );
    let names = onebit::passes::PassSelection::default_pipeline().names();
    assert_eq!(all.matches("# after ").count(), names.len(), "{all}");
    let (_, stderr) = expect(
        1,
        &[
            "ir",
            "examples/digits_cnn.bnn",
            "--passes",
            "fold_batchnrom",
        ],
    );
    assert!(stderr.contains("fold_batchnorm"), "no suggestion: {stderr}");
}

#[test]
fn select_cells_prints_a_model_without_choose() {
    let (ir, _) = expect(
        0,
        &[
            "ir",
            "examples/tiny_search.bnn",
            "--passes",
            "select_cells,default",
        ],
    );
    assert!(!ir.contains("= choose {"), "{ir}");
    onebit::text::parse_str(&ir).expect("the selected architecture is a valid model file");
}

#[test]
fn jit_and_interpreter_agree_through_the_cli() {
    let run = |engine: &str| {
        let (stdout, _) = expect(
            0,
            &[
                "run",
                "examples/digits_cnn.bnn",
                "--seed",
                "2",
                "--input",
                "data/digits/images.npy",
                "--engine",
                engine,
                "--passes",
                "default",
            ],
        );
        stdout
    };
    assert_eq!(run("jit"), run("interp"));
}

/// `bench` states each convolution's rate and, where the peak loops run,
/// its fraction of the machine's measured peak; the totals add up the
/// table's own binary and real rows.
#[test]
fn bench_reports_rates_and_fractions_of_peak() {
    let (out, _) = expect(
        0,
        &[
            "bench",
            "examples/digits_cnn.bnn",
            "--seed",
            "1",
            "--threads",
            "1",
            "--no-interp",
        ],
    );
    assert!(out.contains("| median µs | GMAC/s | of peak |"), "{out}");
    let avx512 = onebit::codegen::target::HostFeatures::detect().avx512_bnn;
    assert_eq!(out.contains("peaks of this machine"), avx512, "{out}");
    // digits_cnn: c1 is real, c2 and y binary (after the default passes).
    let binary: Vec<&str> = out.lines().filter(|l| l.contains("| bconv")).collect();
    assert!(binary.len() >= 2, "{out}");
    for row in &binary {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let rate: f64 = cells[6].parse().unwrap_or_else(|_| panic!("rate in {row}"));
        assert!(rate > 0.0, "{row}");
        assert_eq!(cells[7].ends_with('%'), avx512, "{row}");
    }
    assert!(
        out.contains("binary layers: ") && out.contains("real layers: "),
        "{out}"
    );
}
