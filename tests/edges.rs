//! Regression tests for the edges of the tool (issue 10): resource limits
//! before allocation, outputs that never destroy a file, argument hygiene,
//! PyTorch-compatible weights, one parameter validation for every engine,
//! and weights for optimized and searched models. Each test names the
//! defect it guards against.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn onebit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onebit"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the onebit binary runs")
}

/// Runs `onebit args`, checks the exit status and that nothing panicked or
/// aborted, and returns (stdout, stderr).
fn expect(status: i32, args: &[&str]) -> (String, String) {
    let out = onebit(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(status),
        "onebit {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked")
            && !stderr.contains("internal error")
            && !stderr.contains("memory allocation"),
        "{stderr}"
    );
    (stdout, stderr)
}

/// The stderr of a failing command, for a snapshot.
fn fails(status: i32, args: &[&str]) -> String {
    let (_, stderr) = expect(status, args);
    stderr
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("onebit-edges-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// Every file of `dir` with its bytes.
fn snapshot_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

const HUGE: &str = "model m { input x: f32[65536]  y = dense(x, 65536)  output y }";

#[test]
fn a_huge_model_is_refused_by_every_command_before_allocation() {
    let dir = scratch("huge");
    let m = write(&dir, "m.bnn", HUGE.as_bytes());
    let x = dir.join("x.npy");
    onebit::io::npy::write_file(&x, &[1, 65536], &vec![0.0; 65536]).unwrap();
    let w = dir.join("w.safetensors");
    let o = dir.join("m.o");
    let runs: [Vec<&str>; 6] = [
        vec!["check", s(&m)],
        vec!["check", s(&m), "--passes", "default"],
        vec!["init", s(&m), "-o", s(&w)],
        vec!["run", s(&m), "--seed", "0", "--input", s(&x)],
        vec!["compile", s(&m), "--seed", "0", "-o", s(&o)],
        vec!["bench", s(&m)],
    ];
    for args in &runs {
        let stderr = fails(1, args);
        assert_eq!(
            stderr.trim_end(),
            "error: `y`: 4,295,032,832 parameters need 16.00 GiB; the limit is 4 GiB (set with --max-memory)",
            "{args:?}"
        );
    }
    assert!(!w.exists() && !o.exists());
    // The limit is configurable, and the batch counts.
    let stderr = fails(
        1,
        &["check", "examples/digits_cnn.bnn", "--max-memory", "64KiB"],
    );
    insta::assert_snapshot!(stderr, @"error: `c2`: 18,432 parameters need 72 KiB; the limit is 64 KiB (set with --max-memory)");
    let stderr = fails(
        1,
        &[
            "bench",
            "examples/mlp_digits.bnn",
            "--batch",
            "100000",
            "--max-memory",
            "64MiB",
        ],
    );
    assert!(stderr.contains("for a batch of 100000"), "{stderr}");
    let stderr = fails(
        2,
        &["check", "examples/digits_cnn.bnn", "--max-memory", "lots"],
    );
    assert!(stderr.contains("`lots` is not a size"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_padded_sample_beyond_the_jits_offsets_is_refused() {
    // pad=12000, stride=12000 on 4×4: a 3×3 result, but a 24,004 × 24,004
    // padded copy (2.3 GB); the JIT crashed with SIGSEGV on it.
    let dir = scratch("pad");
    let m = write(
        &dir,
        "m.bnn",
        b"model m { input x: f32[1, 4, 4]  y = conv2d(x, 1, kernel=1, pad=12000, stride=12000)  output y }",
    );
    let x = dir.join("x.npy");
    onebit::io::npy::write_file(&x, &[1, 1, 4, 4], &[0.0; 16]).unwrap();
    for engine in ["jit", "interp"] {
        let stderr = fails(
            1,
            &[
                "run",
                s(&m),
                "--seed",
                "0",
                "--input",
                s(&x),
                "--engine",
                engine,
                "--max-memory",
                "8GiB",
            ],
        );
        assert_eq!(
            stderr.trim_end(),
            "error: `y`: one sample of its padded input is 2.15 GiB; the JIT addresses within a sample with 32-bit offsets, so the limit is 2 GiB (for every engine, so that they accept the same models)"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_name_longer_than_a_format_width_prints() {
    let dir = scratch("longname");
    let name = "a".repeat(65536);
    let m = write(
        &dir,
        "m.bnn",
        format!("model m {{ input x: f32[4]  {name} = relu(x)  output {name} }}").as_bytes(),
    );
    let (stdout, _) = expect(0, &["check", s(&m)]);
    assert!(stdout.contains(&name));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn threads_batch_and_top_k_are_range_checked() {
    let run = |threads: &str| {
        fails(
            2,
            &[
                "run",
                "examples/mlp_digits.bnn",
                "--seed",
                "1",
                "--input",
                "data/digits/images.npy",
                "--threads",
                threads,
            ],
        )
    };
    for bad in ["0", "100000", "many"] {
        let stderr = run(bad);
        assert!(
            stderr.contains(&format!("invalid value '{bad}' for '--threads <THREADS>': must be a whole number from 1 to 256")),
            "{stderr}"
        );
    }
    let stderr = fails(2, &["bench", "examples/mlp_digits.bnn", "--threads", "0"]);
    assert!(stderr.contains("from 1 to 256"), "{stderr}");
    let stderr = fails(2, &["bench", "examples/mlp_digits.bnn", "--batch", "0"]);
    assert!(stderr.contains("at least 1"), "{stderr}");
    let stderr = fails(
        2,
        &[
            "ir",
            "examples/tiny_search.bnn",
            "--passes",
            "select_cells",
            "--top-k",
            "0",
        ],
    );
    assert!(stderr.contains("at least 1"), "{stderr}");
}

#[test]
fn a_closed_pipe_ends_quietly() {
    use std::io::Read;
    // Far more output than a pipe buffers, so that writing must fail.
    let dir = scratch("pipe");
    let mut src = String::from("model m {\n  input x: f32[4]\n  r0 = relu(x)\n");
    for i in 1..20000 {
        src.push_str(&format!("  r{i} = relu(r{})\n", i - 1));
    }
    src.push_str("  output r19999\n}\n");
    let m = write(&dir, "chain.bnn", src.as_bytes());
    let mut child = Command::new(env!("CARGO_BIN_EXE_onebit"))
        .args(["check", s(&m)])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, as `| head -1` does, then close the pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(out.status.code(), Some(141));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn outputs_equal_to_an_input_or_each_other_are_refused_and_nothing_changes() {
    let dir = scratch("outputs");
    let model = std::fs::read("examples/mlp_digits.bnn").unwrap();
    let m = write(&dir, "m.bnn", &model);
    let w = dir.join("w.safetensors");
    expect(0, &["init", s(&m), "-o", s(&w)]);
    let x = dir.join("x.npy");
    onebit::io::npy::write_file(&x, &[2, 64], &[0.5; 128]).unwrap();
    let o = dir.join("x.o");
    let two = write(
        &dir,
        "two.bnn",
        b"model two { input x: f32[8]  a = relu(x)  b = dense(x, 3)  output a, b }",
    );
    let x8 = dir.join("x8.npy");
    onebit::io::npy::write_file(&x8, &[2, 8], &[0.5; 16]).unwrap();
    let before = snapshot_dir(&dir);
    // The same file under another spelling is still the same file.
    let m_again = format!("{}/./m.bnn", s(&dir));
    let cases: Vec<Vec<&str>> = vec![
        vec!["init", s(&m), "-o", s(&m)],
        vec!["init", s(&m), "-o", &m_again],
        vec!["compile", s(&m), "--weights", s(&w), "-o", s(&m)],
        vec!["compile", s(&m), "--weights", s(&w), "-o", s(&w)],
        vec![
            "compile",
            s(&m),
            "--weights",
            s(&w),
            "-o",
            s(&o),
            "--header",
            s(&m),
        ],
        vec![
            "compile",
            s(&m),
            "--weights",
            s(&w),
            "-o",
            s(&o),
            "--header",
            s(&o),
        ],
        vec![
            "run",
            s(&m),
            "--weights",
            s(&w),
            "--input",
            s(&x),
            "-o",
            s(&x),
        ],
        vec![
            "run",
            s(&two),
            "--seed",
            "1",
            "--input",
            s(&x8),
            "-o",
            s(&o),
            "-o",
            s(&o),
        ],
        vec!["ir", s(&m), "--passes", "default", "--save-weights", s(&m)],
        vec!["ir", s(&m), "--weights", s(&w), "--save-weights", s(&w)],
    ];
    let mut messages = Vec::new();
    for args in &cases {
        let stderr = fails(1, args);
        assert!(
            stderr.contains("(nothing was written)"),
            "{args:?}: {stderr}"
        );
        assert_eq!(snapshot_dir(&dir), before, "{args:?} changed a file");
        messages.push(stderr.replace(s(&dir), "DIR"));
    }
    insta::assert_snapshot!(messages.join(""));
    // A multi-output run whose second output cannot be written writes no
    // output at all.
    let y1 = dir.join("y1.npy");
    let stderr = fails(
        1,
        &[
            "run",
            s(&two),
            "--seed",
            "1",
            "--input",
            s(&x8),
            "-o",
            s(&y1),
            "-o",
            "/nonexistent/dir/y2.npy",
        ],
    );
    assert!(
        stderr.starts_with("error: cannot write /nonexistent/dir/y2.npy: "),
        "{stderr}"
    );
    assert_eq!(snapshot_dir(&dir), before, "a failed run left files");
    // And a run that fails late (bad labels) writes nothing either.
    let labels = dir.join("l.npy");
    onebit::io::npy::write_file(&labels, &[2], &[0.5, 1.0]).unwrap();
    let before = snapshot_dir(&dir);
    fails(
        1,
        &[
            "run",
            s(&m),
            "--weights",
            s(&w),
            "--input",
            s(&x),
            "-o",
            s(&y1),
            "--labels",
            s(&labels),
        ],
    );
    assert_eq!(snapshot_dir(&dir), before);
    // A successful compile writes both files and no temporary ones remain.
    let h = dir.join("x.h");
    expect(
        0,
        &[
            "compile",
            s(&m),
            "--weights",
            s(&w),
            "-o",
            s(&o),
            "--header",
            s(&h),
        ],
    );
    assert!(o.exists() && h.exists());
    let header = std::fs::read_to_string(&h).unwrap();
    assert!(
        header.contains("/* Bytes of scratch memory mlp_digits_run needs"),
        "{header}"
    );
    assert!(!header.contains("NAME"), "{header}");
    assert!(
        snapshot_dir(&dir).iter().all(|(n, _)| !n.ends_with(".tmp")),
        "a temporary file remains"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn compile_needs_weights_or_an_explicit_seed() {
    let dir = scratch("compile-seed");
    let o = dir.join("m.o");
    let stderr = fails(1, &["compile", "examples/mlp_digits.bnn", "-o", s(&o)]);
    insta::assert_snapshot!(stderr, @"error: compile embeds the weights in the object: give --weights FILE, or --seed N for freshly initialised ones");
    assert!(!o.exists());
    expect(
        0,
        &[
            "compile",
            "examples/mlp_digits.bnn",
            "--seed",
            "0",
            "-o",
            s(&o),
        ],
    );
    assert!(o.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_option_does_not_swallow_the_model_path() {
    // `--input` takes one file per occurrence, so the model after it is
    // the positional argument.
    let (stdout, _) = expect(
        0,
        &[
            "run",
            "--seed",
            "1",
            "--input",
            "data/digits/images.npy",
            "examples/digits_cnn.bnn",
            "--labels",
            "data/digits/labels.npy",
        ],
    );
    assert!(stdout.contains("accuracy: "), "{stdout}");
}

#[test]
fn labels_are_whole_classes_of_shape_n() {
    let dir = scratch("labels");
    let w = dir.join("w.safetensors");
    expect(0, &["init", "examples/mlp_digits.bnn", "-o", s(&w)]);
    let x = dir.join("x.npy");
    onebit::io::npy::write_file(&x, &[2, 64], &[0.5; 128]).unwrap();
    let mut messages = Vec::new();
    let cases: [(&str, Vec<usize>, Vec<f32>); 6] = [
        ("fractional", vec![2], vec![0.0, 1.5]),
        ("negative", vec![2], vec![-1.0, 1.0]),
        ("huge", vec![2], vec![1e12, 1.0]),
        ("nan", vec![2], vec![f32::NAN, 1.0]),
        ("out of range", vec![2], vec![10.0, 1.0]),
        ("2-D", vec![2, 1], vec![0.0, 1.0]),
    ];
    for (what, shape, data) in cases {
        let l = dir.join("l.npy");
        onebit::io::npy::write_file(&l, &shape, &data).unwrap();
        let stderr = fails(
            1,
            &[
                "run",
                "examples/mlp_digits.bnn",
                "--weights",
                s(&w),
                "--input",
                s(&x),
                "--labels",
                s(&l),
            ],
        );
        messages.push(format!("{what}: {}", stderr.replace(s(&dir), "DIR")));
    }
    insta::assert_snapshot!(messages.join(""));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn messages_name_the_file_and_count_right() {
    let dir = scratch("messages");
    let bad = dir.join("bad.npy");
    onebit::io::npy::write_file(&bad, &[3, 8, 8], &[0.0; 192]).unwrap();
    let mut messages = Vec::new();
    for engine in ["interp", "jit"] {
        messages.push(fails(
            1,
            &[
                "run",
                "examples/mlp_digits.bnn",
                "--seed",
                "1",
                "--input",
                s(&bad),
                "--engine",
                engine,
            ],
        ));
    }
    let x = dir.join("x.npy");
    onebit::io::npy::write_file(&x, &[3, 64], &[0.0; 192]).unwrap();
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    messages.push(fails(
        1,
        &[
            "run",
            "examples/mlp_digits.bnn",
            "--seed",
            "1",
            "--input",
            s(&x),
            "-o",
            s(&a),
            "-o",
            s(&b),
        ],
    ));
    insta::assert_snapshot!(messages.join("").replace(s(&dir), "DIR"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn check_loads_and_validates_the_weights_it_is_given() {
    let dir = scratch("check-weights");
    let stderr = fails(
        1,
        &[
            "check",
            "examples/mlp_digits.bnn",
            "--weights",
            "no/such.safetensors",
        ],
    );
    assert!(stderr.contains("no/such.safetensors"), "{stderr}");
    let junk = write(&dir, "junk.safetensors", b"garbage");
    let stderr = fails(
        1,
        &["check", "examples/mlp_digits.bnn", "--weights", s(&junk)],
    );
    assert!(stderr.contains("not a valid safetensors file"), "{stderr}");
    let w = dir.join("w.safetensors");
    expect(0, &["init", "examples/digits_cnn.bnn", "-o", s(&w)]);
    let stderr = fails(1, &["check", "examples/mlp_digits.bnn", "--weights", s(&w)]);
    assert!(stderr.contains("missing    fc1.weight"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A safetensors file written by hand, as PyTorch's `save_file` lays it out:
/// `(name, dtype, shape, little-endian bytes)`.
fn safetensors(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            shape.join(","),
            data.len(),
            data.len() + bytes.len()
        ));
        data.extend_from_slice(bytes);
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

#[test]
fn a_pytorch_state_dict_loads_as_saved() {
    let dir = scratch("state-dict");
    let graph =
        onebit::parse(&std::fs::read_to_string("examples/digits_cnn.bnn").unwrap()).unwrap();
    let params = onebit::ir::Params::init(&graph, 5);
    let mut tensors: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in &params.tensors {
        // PyTorch in double precision for the weights, float elsewhere.
        if name.ends_with(".weight") {
            let bytes = t
                .data
                .iter()
                .flat_map(|&v| (v as f64).to_le_bytes())
                .collect();
            tensors.push((name, "F64", t.shape.clone(), bytes));
        } else {
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((name, "F32", t.shape.clone(), bytes));
        }
    }
    let counters: Vec<String> = ["s1.batchnorm", "s2.batchnorm", "y"]
        .iter()
        .map(|n| format!("{n}.num_batches_tracked"))
        .collect();
    for c in &counters {
        tensors.push((c, "I64", vec![], 1000i64.to_le_bytes().to_vec()));
    }
    let w = write(&dir, "state_dict.safetensors", &safetensors(&tensors));
    let (_, stderr) = expect(0, &["check", "examples/digits_cnn.bnn", "--weights", s(&w)]);
    assert_eq!(
        stderr.replace(s(&dir), "DIR").trim_end(),
        "note: DIR/state_dict.safetensors: converted 6 f64 tensors to f32"
    );
    let run = |weights: &[&str]| {
        let mut args = vec![
            "run",
            "examples/digits_cnn.bnn",
            "--input",
            "data/digits/images.npy",
        ];
        args.extend(weights);
        expect(0, &args).0
    };
    assert_eq!(run(&["--weights", s(&w)]), run(&["--seed", "5"]));
    std::fs::remove_dir_all(&dir).ok();
}

/// `ir --save-weights` writes what the printed model needs; running the
/// printed model from those files gives what the original gives.
fn printed_model_runs_from_files(model: &str, passes: &str, dir: &Path) {
    let w = dir.join("w.safetensors");
    expect(0, &["init", model, "-o", s(&w), "--seed", "3"]);
    let w2 = dir.join("w2.safetensors");
    let (printed, _) = expect(
        0,
        &[
            "ir",
            model,
            "--weights",
            s(&w),
            "--passes",
            passes,
            "--save-weights",
            s(&w2),
        ],
    );
    let m2 = write(dir, "printed.bnn", printed.as_bytes());
    let input = if model.contains("tiny_search") {
        let g = onebit::parse(&std::fs::read_to_string(model).unwrap()).unwrap();
        let dims = g.node(g.inputs()[0]).ty.dims().to_vec();
        let n: usize = dims.iter().product();
        let mut shape = vec![5];
        shape.extend(dims);
        let x = dir.join("x.npy");
        let data: Vec<f32> = (0..5 * n).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        onebit::io::npy::write_file(&x, &shape, &data).unwrap();
        s(&x).to_string()
    } else {
        "data/digits/images.npy".to_string()
    };
    for engine in ["interp", "jit"] {
        let run = |m: &str, w: &Path, passes: &str| {
            expect(
                0,
                &[
                    "run",
                    m,
                    "--weights",
                    s(w),
                    "--input",
                    &input,
                    "--engine",
                    engine,
                    "--passes",
                    passes,
                ],
            )
            .0
        };
        let original = run(model, &w, passes);
        let again = run(s(&m2), &w2, "none");
        assert_eq!(again, original, "{model} {passes} {engine}");
    }
}

#[test]
fn the_optimized_model_runs_from_saved_weights() {
    let dir = scratch("save-weights");
    printed_model_runs_from_files("examples/digits_cnn.bnn", "default", &dir);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_finalized_search_runs_from_saved_weights() {
    let dir = scratch("save-weights-search");
    printed_model_runs_from_files("examples/tiny_search.bnn", "select_cells", &dir);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_engine_refuses_the_same_parameters() {
    let src = "model m { input x: f32[4]  s = sign(x)  y = bdense(s, 3, output=threshold)  t = threshold(x)  output y, t }";
    let graph = onebit::parse(src).unwrap();
    let x = onebit::ir::Tensor {
        shape: vec![1, 4],
        data: vec![0.5, -1.0, 2.0, 0.0],
    };
    let verified = || onebit::verify(&graph).unwrap();
    let cases: [(&str, f32); 4] = [
        ("y.direction", 0.5),
        ("t.direction", f32::NAN),
        ("y.threshold", f32::NAN),
        ("t.direction", 0.0),
    ];
    for (name, value) in cases {
        let mut p = onebit::ir::Params::init(&graph, 1);
        p.tensors.get_mut(name).unwrap().data[1] = value;
        let interp = onebit::ir::interp::run(&graph, &p, std::slice::from_ref(&x)).unwrap_err();
        let jit = onebit::CompiledModel::compile(verified(), &p, &onebit::Options::default())
            .err()
            .expect("the JIT refuses too");
        let object = onebit::codegen::object::compile(verified(), &p, &onebit::Options::default())
            .err()
            .expect("the object back end refuses too");
        assert_eq!(interp.to_string(), jit.to_string(), "{name} = {value}");
        assert_eq!(jit.to_string(), object.to_string(), "{name} = {value}");
        assert!(interp.to_string().contains(name), "{interp}");
    }
    // And all accept ±1 and infinite thresholds.
    let mut p = onebit::ir::Params::init(&graph, 1);
    p.tensors.get_mut("y.direction").unwrap().data = vec![-1.0, 1.0, -1.0];
    p.tensors.get_mut("y.threshold").unwrap().data = vec![f32::INFINITY, -3.0, f32::NEG_INFINITY];
    let expected = onebit::ir::interp::run(&graph, &p, std::slice::from_ref(&x)).unwrap();
    let model =
        onebit::CompiledModel::compile(verified(), &p, &onebit::Options::default()).unwrap();
    let got = model.run_many(&[&x.data], 1).unwrap();
    assert_eq!(
        got,
        expected.into_iter().map(|t| t.data).collect::<Vec<_>>()
    );
}

#[test]
fn a_byte_order_mark_and_classic_mac_line_ends_are_accepted() {
    let body = "model m {\r  input x: f32[4]\r  y = relu(x)\r  output y\r}\r";
    let g = onebit::text::parse("bom.bnn", format!("\u{feff}{body}").as_bytes()).unwrap();
    assert_eq!(g.name, "m");
    // An error in a CR-only file renders on its own line, without raw CRs.
    let bad = "model m {\r  input x: f32[4]\r  y = relu(z)\r  output y\r}\r";
    let err = onebit::text::parse("cr.bnn", bad.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(!err.contains('\r'), "{err:?}");
    insta::assert_snapshot!(err);
}

#[test]
fn cells_may_return_numbers_and_pairs_where_numbers_go() {
    let src = "cell k() { return 3 }\ncell hw(a) { return (a, 1) }\nmodel m {\n  input x: f32[2, 8, 8]\n  a = conv2d(x, 4, kernel=k())\n  b = conv2d(x, 4, kernel=(k(), 1))\n  c = conv2d(x, 4, kernel=hw(3), pad=(1, k()))\n  output a, b, c\n}\n";
    let g = onebit::parse(src).unwrap();
    let ty = |n: &str| g.node(g.find(n).unwrap()).ty.to_string();
    assert_eq!(ty("a"), "f32[4, 6, 6]");
    assert_eq!(ty("b"), "f32[4, 6, 8]");
    assert_eq!(ty("c"), "f32[4, 8, 14]");
    // An op call still is not a number.
    let err = onebit::parse(
        "model m { input x: f32[2, 8, 8]  a = conv2d(x, 4, kernel=relu(x))  output a }",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`kernel` needs a number, found a call of `relu`"),
        "{err}"
    );
}

/// Found by `fuzz/`'s jit target: the JIT fused a `threshold` into the
/// elementwise op before it as a plain sign whenever channel 0's threshold
/// was `y >= 0`, whatever the other channels' thresholds.
#[test]
fn a_threshold_is_fused_as_a_sign_only_if_every_channel_is_one() {
    let src = "model m { input x: f32[2, 1, 1]  b = batchnorm(x)  t = threshold(b)  output t }";
    let graph = onebit::parse(src).unwrap();
    let mut p = onebit::ir::Params::init(&graph, 0);
    p.tensors.get_mut("t.threshold").unwrap().data = vec![0.0, 5.0];
    let x = onebit::ir::Tensor {
        shape: vec![1, 2, 1, 1],
        data: vec![1.0, 1.0],
    };
    let expected = onebit::ir::interp::run(&graph, &p, std::slice::from_ref(&x)).unwrap();
    assert_eq!(expected[0].data, vec![1.0, -1.0]);
    let model = onebit::CompiledModel::compile(
        onebit::verify(&graph).unwrap(),
        &p,
        &onebit::Options::default(),
    )
    .unwrap();
    assert_eq!(model.run(&x.data, 1).unwrap(), expected[0].data);
}
