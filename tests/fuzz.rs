//! The front end never panics, overflows its stack or hangs, whatever the bytes.
//!
//! Every case parses some input; an error must render (`to_string`) without
//! panicking and locate itself as `file:line:col` inside the file. Inputs are
//! arbitrary bytes, mutations of the example models, every truncation of
//! `digits_cnn.bnn`, random token soups over the language's vocabulary, and
//! a few hand-made extremes (deep nesting, long chains, exponential cells).

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;

const FILE: &str = "fuzz.bnn";

/// Parses `bytes`; checks that it finished promptly and that an error renders
/// with a locator inside the file.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let result = onebit::text::parse(FILE, bytes);
    let elapsed = start.elapsed();
    prop_assert!(
        elapsed < Duration::from_secs(5),
        "parsing took {elapsed:?}: {:?}",
        String::from_utf8_lossy(bytes)
    );
    let Err(e) = result else {
        return Ok(());
    };
    let text = e.to_string();
    let Some((line, col)) = e.line_col() else {
        return Err(TestCaseError::fail(format!("no location in:\n{text}")));
    };
    // A `\r` not followed by `\n` ends a line too (ir-spec/language.md).
    let source = String::from_utf8_lossy(bytes)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let lines: Vec<&str> = source.split('\n').collect();
    prop_assert!(
        line >= 1 && line <= lines.len(),
        "line {line} of {}:\n{text}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    prop_assert!(
        col >= 1 && col <= width + 1,
        "column {col} of a {width}-character line:\n{text}"
    );
    let locator = format!("{FILE}:{line}:{col}");
    prop_assert!(text.contains(&locator), "no `{locator}` in:\n{text}");
    Ok(())
}

fn examples() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bnn"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

fn digits_cnn() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/digits_cnn.bnn")).unwrap()
}

/// The language's vocabulary, and things near it.
const TOKENS: &[&str] = &[
    "model",
    "cell",
    "input",
    "output",
    "return",
    "choose",
    "conv2d",
    "bconv2d",
    "dense",
    "bdense",
    "sign",
    "batchnorm",
    "relu",
    "prelu",
    "hardtanh",
    "maxpool",
    "avgpool",
    "global_avgpool",
    "flatten",
    "add",
    "concat",
    "slice_channels",
    "shuffle_channels",
    "zero",
    "identity",
    "conv2",
    "x",
    "y",
    "c",
    "a.b.0",
    "x.",
    ".x",
    "f32",
    "bit",
    "f16",
    "kernel",
    "stride",
    "pad",
    "dilation",
    "groups",
    "pad_value",
    "scale",
    "channel",
    "none",
    "bias",
    "true",
    "false",
    "eps",
    "min",
    "max",
    "out_channels",
    "out_features",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ",",
    "=",
    ":",
    ";",
    ".",
    "-",
    "+",
    "#",
    "# comment\n",
    "\n",
    " ",
    "\t",
    "\r\n",
    "0",
    "1",
    "3",
    "-1",
    "1.5",
    "1e-5",
    "1e999",
    "-0.0",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999",
    "0.",
    "1e",
    "\"",
    "é",
    "\u{0}",
    "\u{feff}",
];

/// A random sequence of vocabulary tokens, separated by spaces or not.
fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(TOKENS), any::<bool>()), 0..60).prop_map(|ts| {
        let mut s = String::new();
        for (t, space) in ts {
            s.push_str(t);
            if space {
                s.push(' ');
            }
        }
        s
    })
}

/// A soup placed where it is most likely to reach lowering: inside a model
/// with an input, as a binding's right-hand side, or as a cell body.
fn framed_soup() -> impl Strategy<Value = String> {
    (soup(), 0..4u8).prop_map(|(s, frame)| match frame {
        0 => s,
        1 => format!("model m {{\n  input x: f32[2, 8, 8]\n  {s}\n  output y\n}}\n"),
        2 => format!("model m {{\n  input x: f32[2, 8, 8]\n  y = {s}\n  output y\n}}\n"),
        _ => format!(
            "cell c(x, k) {{\n  {s}\n}}\nmodel m {{\n  input x: f32[2, 8, 8]\n  y = c(x, 3)\n  output y\n}}\n"
        ),
    })
}

/// Names bindings, inputs and references draw from, so that references often resolve.
const NAMES: &[&str] = &["x", "y", "a", "b", "h", "s.1", "k", "channel", "false"];

/// Callees: every op, a cell, and near misses.
const CALLEES: &[&str] = &[
    "conv2d",
    "bconv2d",
    "dense",
    "bdense",
    "sign",
    "batchnorm",
    "relu",
    "prelu",
    "hardtanh",
    "maxpool",
    "avgpool",
    "global_avgpool",
    "flatten",
    "add",
    "concat",
    "slice_channels",
    "shuffle_channels",
    "zero",
    "identity",
    "blk",
    "conv2",
    "input",
];

/// Argument keywords: every attribute, cell parameters and near misses.
const KEYWORDS: &[&str] = &[
    "input",
    "out_channels",
    "out_features",
    "kernel",
    "stride",
    "pad",
    "dilation",
    "groups",
    "pad_value",
    "scale",
    "bias",
    "eps",
    "min",
    "max",
    "x",
    "k",
    "kernal",
];

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "4",
    "8",
    "16",
    "-1",
    "1.5",
    "1e-5",
    "-0.5",
    "4294967296",
    "9223372036854775807",
];

/// A random, mostly well-formed expression over the language.
fn expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        3 => prop::sample::select(NAMES).prop_map(String::from),
        2 => prop::sample::select(NUMBERS).prop_map(String::from),
    ];
    leaf.prop_recursive(5, 40, 5, |inner| {
        let arg = (
            prop::option::of(prop::sample::select(KEYWORDS)),
            inner.clone(),
        )
            .prop_map(|(k, v)| match k {
                Some(k) => format!("{k}={v}"),
                None => v,
            });
        prop_oneof![
            4 => (
                prop::sample::select(CALLEES),
                prop::option::weighted(0.9, inner.clone()),
                prop::collection::vec(arg, 0..4),
            )
                .prop_map(|(f, first, rest)| {
                    let args: Vec<String> = first.into_iter().chain(rest).collect();
                    format!("{f}({})", args.join(", "))
                }),
            1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}, {b})")),
            1 => prop::collection::vec(inner, 1..4)
                .prop_map(|alts| format!("choose {{ {} }}", alts.join(", "))),
        ]
    })
}

/// A random, mostly well-formed model file: it gets past the parser and
/// exercises name resolution, cells and type checking.
fn program() -> impl Strategy<Value = String> {
    let shape = prop_oneof![
        (1usize..=4, 1usize..=9, 1usize..=9).prop_map(|(c, h, w)| format!("{c}, {h}, {w}")),
        (1usize..=32).prop_map(|k| k.to_string()),
    ];
    // Inputs and bindings take distinct names, in an order of their own.
    let names = Just(NAMES.to_vec()).prop_shuffle();
    (
        names,
        prop::collection::vec(shape, 1..3),
        prop::collection::vec(expression(), 0..7),
        prop::collection::vec(prop::sample::select(NAMES), 1..3),
        prop::option::of((expression(), expression())),
    )
        .prop_map(|(names, inputs, bindings, outputs, cell)| {
            let mut s = String::new();
            if let Some((t, r)) = cell {
                s.push_str(&format!("cell blk(x, k) {{\n  t = {t}\n  return {r}\n}}\n"));
            }
            s.push_str("model m {\n");
            let mut names = names.into_iter();
            for (n, dims) in names.by_ref().zip(inputs) {
                s.push_str(&format!("  input {n}: f32[{dims}]\n"));
            }
            for (n, e) in names.zip(bindings) {
                s.push_str(&format!("  {n} = {e}\n"));
            }
            if !outputs.is_empty() {
                s.push_str(&format!("  output {}\n", outputs.join(", ")));
            }
            s.push_str("}\n");
            s
        })
}

/// An edit of a file.
#[derive(Clone, Debug)]
enum Edit {
    Delete(prop::sample::Index, usize),
    Insert(prop::sample::Index, Vec<u8>),
    InsertToken(prop::sample::Index, &'static str),
    Replace(prop::sample::Index, u8),
    Duplicate(prop::sample::Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    use prop::sample::Index;
    prop_oneof![
        (any::<Index>(), 1usize..8).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..4))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), prop::sample::select(TOKENS)).prop_map(|(i, t)| Edit::InsertToken(i, t)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<Index>(), 1usize..40).prop_map(|(i, n)| Edit::Duplicate(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    if bytes.is_empty() {
        return;
    }
    match e {
        Edit::Delete(i, n) => {
            let at = i.index(bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Edit::Insert(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Edit::InsertToken(i, t) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, t.bytes());
        }
        Edit::Replace(i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        Edit::Duplicate(i, n) => {
            let at = i.index(bytes.len());
            let end = (at + n).min(bytes.len());
            let copy: Vec<u8> = bytes[at..end].to_vec();
            bytes.splice(end..end, copy);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check(&bytes)?;
    }

    #[test]
    fn arbitrary_text(text in "\\PC{0,120}") {
        check(text.as_bytes())?;
    }

    #[test]
    fn token_soups(text in framed_soup()) {
        check(text.as_bytes())?;
    }

    #[test]
    fn random_programs(text in program()) {
        check(text.as_bytes())?;
    }

    #[test]
    fn mutated_examples(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let all = examples();
        let mut bytes = which.get(&all).clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        check(&bytes)?;
    }
}

#[test]
fn every_truncation_of_digits_cnn() {
    let bytes = digits_cnn();
    for end in 0..=bytes.len() {
        check(&bytes[..end]).unwrap_or_else(|e| panic!("truncated at {end}: {e}"));
    }
}

#[test]
fn every_single_byte_deletion_of_digits_cnn() {
    let bytes = digits_cnn();
    for at in 0..bytes.len() {
        let mut b = bytes.clone();
        b.remove(at);
        check(&b).unwrap_or_else(|e| panic!("deleted byte {at}: {e}"));
    }
}

/// Nesting at and past every limit: an error or a graph, never a stack overflow.
#[test]
fn deep_nesting_is_bounded() {
    for depth in [60, 64, 65, 66, 1_000, 100_000] {
        for (open, close) in [
            ("sign(", ")"),
            ("(", ", 1)"),
            ("choose { ", " }"),
            ("add(x, ", ")"),
        ] {
            let src = format!(
                "model m {{ input x: f32[4]\n y = {}x{}\n output y }}",
                open.repeat(depth),
                close.repeat(depth)
            );
            check(src.as_bytes()).unwrap();
        }
    }
}

/// Cells nesting as deep as allowed, each returning a deeply nested expression
/// of ops or of calls of the next cell (whose arguments are evaluated on the
/// deepest path of the evaluator): its depth limit, not the stack, stops them.
#[test]
fn deep_cells_are_bounded() {
    for (cells, nesting, wrap) in [
        (2, 1, "identity("),
        (8, 20, "identity("),
        (31, 1, "identity("),
        (33, 1, "identity("),
        (40, 63, "identity("),
        (3, 63, "c{}("),
        (8, 20, "c{}("),
        (12, 63, "c{}("),
    ] {
        let mut src = String::from("cell c0(x) { return relu(x) }\n");
        for k in 1..cells {
            let open = wrap.replace("{}", &(k - 1).to_string());
            src.push_str(&format!(
                "cell c{k}(x) {{ return {}c{}(x){} }}\n",
                open.repeat(nesting),
                k - 1,
                ")".repeat(nesting)
            ));
        }
        src.push_str(&format!(
            "model m {{ input x: f32[4]\n y = c{}(x)\n output y }}",
            cells - 1
        ));
        check(src.as_bytes()).unwrap();
    }
}

/// A long chain of bindings written backwards is valid and lowers without deep
/// recursion; closing it into a cycle is an error.
#[test]
fn long_backward_chains_and_cycles() {
    let n = 5_000;
    let mut chain = String::from("model m {\n  input x: f32[4]\n");
    for k in (1..=n).rev() {
        chain.push_str(&format!("  a{k} = relu(a{})\n", k - 1));
    }
    chain.push_str(&format!("  a0 = relu(x)\n  output a{n}\n}}\n"));
    let g = onebit::text::parse(FILE, chain.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.len(), n + 2);

    let cycle = chain.replace("a0 = relu(x)", &format!("a0 = relu(a{n})"));
    let e = onebit::text::parse(FILE, cycle.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    check(cycle.as_bytes()).unwrap();
}

/// Cells that call cells twice describe exponentially large graphs: an error
/// after bounded work.
#[test]
fn exponential_cells_are_bounded() {
    let mut src = String::from("cell c0(x) { return relu(x) }\n");
    for k in 1..30 {
        src.push_str(&format!(
            "cell c{k}(x) {{ a = c{j}(x)\n b = c{j}(x)\n return x }}\n",
            j = k - 1
        ));
    }
    src.push_str("model m { input x: f32[4]\n y = c29(x)\n output y }");
    let e = onebit::text::parse(FILE, src.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
}

/// Found by `arbitrary_bytes`: a lone carriage return ends a line, also in
/// the location of an invalid-UTF-8 error.
#[test]
fn lone_carriage_returns_locate_errors_like_line_ends() {
    for bytes in [&b"\r"[..], b"\r\xff", b"model m {\r  input x: f32[0]\r}"] {
        check(bytes).unwrap();
    }
}
