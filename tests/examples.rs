//! The example models in `examples/` and the specification in `ir-spec/`.
//!
//! Every `examples/*.bnn` file (the directory is enumerated, so a new example
//! is covered without touching this file) must parse and verify, and survive
//! the printer: `parse(print(g))` is the same model as `g`, and printing it
//! again gives the same text (`ir-spec/language.md` §8). The tests also pin
//! the examples' interfaces, the programs the first two examples hold, the
//! node-naming examples quoted in the language spec, the grammar rules it
//! copies from `src/text/parser.rs`, and its sample rendered error.

use std::path::{Path, PathBuf};

use onebit::ir::ops::{BConv2d, PadValue, Scale};
use onebit::ir::{Graph, Op};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `examples/*.bnn`, sorted by name.
fn example_files() -> Vec<PathBuf> {
    let dir = root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "bnn"))
        .collect();
    files.sort();
    files
}

/// Parses `path`, naming it as given in diagnostics; panics with the rendered error.
fn parse_file(path: &Path) -> Graph {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let name = path.display().to_string();
    onebit::text::parse(&name, &bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// Parses `examples/NAME.bnn`.
fn example(name: &str) -> Graph {
    parse_file(&root().join("examples").join(format!("{name}.bnn")))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .replace("\r\n", "\n")
}

#[test]
fn every_example_survives_print_and_parse() {
    let files = example_files();
    assert!(
        files.len() >= 5,
        "expected at least the five examples, found {files:?}"
    );
    for path in files {
        let g = parse_file(&path);
        let printed = onebit::text::print(&g);
        let g2 = onebit::text::parse("<printed>", printed.as_bytes()).unwrap_or_else(|e| {
            panic!(
                "the printed form of {} does not parse:\n{e}\n--- printed ---\n{printed}",
                path.display()
            )
        });
        if let Err(diff) = g.same_as(&g2) {
            panic!(
                "{}: parse(print(g)) differs from g: {diff}\n--- printed ---\n{printed}",
                path.display()
            );
        }
        let reprinted = onebit::text::print(&g2);
        assert_eq!(
            printed,
            reprinted,
            "{}: printing is not a fixed point",
            path.display()
        );
    }
}

#[test]
fn examples_have_their_documented_interfaces() {
    // (example, input types, output types)
    let expected: [(&str, &[&str], &[&str]); 5] = [
        ("digits_cnn", &["f32[1, 8, 8]"], &["f32[10]"]),
        ("tiny_search", &["f32[1, 8, 8]"], &["f32[10]"]),
        ("mlp_digits", &["f32[64]"], &["f32[10]"]),
        ("bireal_block", &["f32[3, 32, 32]"], &["f32[10]"]),
        ("resnet18_bnn", &["f32[3, 224, 224]"], &["f32[1000]"]),
    ];
    for (name, inputs, outputs) in expected {
        let g = example(name);
        assert_eq!(
            g.name, name,
            "the model in {name}.bnn is named `{}`",
            g.name
        );
        let types = |ids: &[onebit::ir::NodeId]| -> Vec<String> {
            ids.iter().map(|&id| g.node(id).ty.to_string()).collect()
        };
        assert_eq!(types(g.inputs()), inputs, "inputs of {name}");
        assert_eq!(types(g.outputs()), outputs, "outputs of {name}");
    }
}

/// `examples/digits_cnn.bnn` as the issue gives it.
const DIGITS_CNN: &str = "\
# Binarized CNN for the 8x8 digits data.
model digits_cnn {
  input x: f32[1, 8, 8]              # C, H, W; the batch dimension is implicit

  c1 = conv2d(x, 32, kernel=3, pad=1)
  s1 = sign(batchnorm(c1))
  c2 = bconv2d(s1, 64, kernel=3, pad=1, pad_value=1, scale=channel)
  p2 = maxpool(c2, 2)
  s2 = sign(batchnorm(p2))
  f  = flatten(s2)
  d  = bdense(f, 10)
  y  = batchnorm(d)
  output y
}
";

/// `examples/tiny_search.bnn` as the issue gives it.
const TINY_SEARCH: &str = "\
# One searchable edge: DARTS-style candidates, every convolution binarized.
cell edge(x, c) {
  return choose {
    bconv2d(sign(x), c, kernel=3, pad=1),
    bconv2d(sign(x), c, kernel=5, pad=2),
    bconv2d(sign(x), c, kernel=3, pad=2, dilation=2),
    maxpool(x, 3, stride=1, pad=1),
    avgpool(x, 3, stride=1, pad=1),
    x,
    zero(x),
  }
}

model tiny_search {
  input x: f32[1, 8, 8]
  stem = batchnorm(conv2d(x, 16, kernel=3, pad=1))
  a = edge(stem, 16)
  b = add(edge(stem, 16), edge(a, 16))
  y = bdense(sign(flatten(batchnorm(b))), 10)
  output y
}
";

#[test]
fn the_issue_examples_hold_the_issue_programs() {
    for (name, program) in [("digits_cnn", DIGITS_CNN), ("tiny_search", TINY_SEARCH)] {
        let expected = onebit::text::parse(name, program.as_bytes())
            .unwrap_or_else(|e| panic!("the issue's {name} does not parse:\n{e}"));
        let found = example(name);
        if let Err(diff) = found.same_as(&expected) {
            panic!("examples/{name}.bnn is not the issue's program: {diff}");
        }
        assert_eq!(
            read(&format!("examples/{name}.bnn")),
            program,
            "examples/{name}.bnn differs from the issue's text"
        );
    }
}

/// The node names `ir-spec/language.md` §7 uses as worked examples.
#[test]
fn node_names_match_the_language_spec() {
    let cases: [(&str, &[&str]); 3] = [
        ("digits_cnn", &["c1", "s1", "s1.batchnorm", "y"]),
        (
            "tiny_search",
            &[
                "stem",
                "stem.conv2d",
                "a.choose",
                "a.choose.0",
                "a.choose.0.sign",
                "a.choose.3",
                "a.choose.4",
                "a.choose.6",
                "b",
                "b.edge.0.choose",
                "b.edge.1.choose",
                "b.edge.1.choose.3",
                "y",
                "y.sign",
                "y.sign.flatten",
                "y.sign.flatten.batchnorm",
            ],
        ),
        (
            "resnet18_bnn",
            &[
                "layer1.0.binary_conv.sign",
                "layer1.0.binary_conv",
                "layer1.0.bn1",
                "layer1.0.add",
                "layer2.0.downsample.1",
                "fc",
                "fc.global_avgpool",
            ],
        ),
    ];
    for (name, nodes) in cases {
        let g = example(name);
        for node in nodes {
            assert!(g.find(node).is_some(), "{name} has no node `{node}`");
        }
    }
    // A `choose` alternative that is a plain name makes no node of its own.
    let g = example("tiny_search");
    assert!(g.find("a.choose.5").is_none());
    assert!(
        g.find("a").is_none(),
        "a cell instance has no node of its own"
    );
    let choose = g.find("a.choose").expect("a.choose");
    let operands: Vec<&str> = g
        .operands(choose)
        .into_iter()
        .map(|o| g.node(o).name.as_str())
        .collect();
    assert_eq!(operands[5], "stem");
    assert_eq!(
        g.node(g.find("b.edge.1.choose.3").unwrap()).op.name(),
        "maxpool"
    );
}

/// The ResNet-18 example has the structure its header describes.
#[test]
fn resnet18_bnn_is_a_bireal_resnet18() {
    let g = example("resnet18_bnn");
    let count = |op: &str| {
        g.node_ids()
            .filter(|&id| g.node(id).op.name() == op)
            .count()
    };
    // 16 binary 3x3 convolutions (4 stages x 2 basic blocks x 2), each with
    // its own shortcut add; the stem and 3 downsampling 1x1 convs are real.
    assert_eq!(count("bconv2d"), 16);
    assert_eq!(count("sign"), 16);
    assert_eq!(count("add"), 16);
    assert_eq!(count("conv2d"), 4);
    assert_eq!(count("avgpool"), 3);
    assert_eq!(count("dense"), 1);
    assert_eq!(count("bdense"), 0);
    for id in g.node_ids() {
        let node = g.node(id);
        if let Op::BConv2d(BConv2d {
            geometry,
            pad_value,
            scale,
            ..
        }) = &node.op
        {
            assert_eq!(geometry.kernel, [3, 3], "{}", node.name);
            assert_eq!(geometry.pad, [1, 1], "{}", node.name);
            assert_eq!(*pad_value, PadValue::One, "{}", node.name);
            assert_eq!(*scale, Scale::Channel, "{}", node.name);
            let input = g.operands(id)[0];
            assert!(
                matches!(g.node(input).op, Op::Sign(_)),
                "{} reads a sign",
                node.name
            );
        }
    }
    for (stage, shape) in [
        (1, "f32[64, 56, 56]"),
        (2, "f32[128, 28, 28]"),
        (3, "f32[256, 14, 14]"),
        (4, "f32[512, 7, 7]"),
    ] {
        let last = g.find(&format!("layer{stage}.3.add")).unwrap();
        assert_eq!(g.node(last).ty.to_string(), shape, "layer{stage}");
    }
}

/// Every grammar rule in the doc comments of `src/text/parser.rs` appears,
/// verbatim up to whitespace, in `ir-spec/language.md`.
#[test]
fn language_spec_has_the_parser_grammar() {
    let parser = read("src/text/parser.rs");
    let spec = read("ir-spec/language.md");
    let normalize = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let spec = normalize(&spec);

    let mut rules: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in parser.lines() {
        let Some(doc) = line.trim_start().strip_prefix("///") else {
            rules.extend(current.take());
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        // A rule opens with `name = `; its continuation lines are indented.
        let opens = doc.split_once(" = ").is_some_and(|(lhs, _)| {
            !lhs.is_empty() && lhs.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if opens {
            rules.extend(current.take());
            current = Some(doc.to_string());
        } else if doc.starts_with(' ') && current.is_some() {
            let rule = current.as_mut().unwrap();
            rule.push(' ');
            rule.push_str(doc);
        } else {
            rules.extend(current.take());
        }
    }
    rules.extend(current);
    assert!(
        rules.len() >= 10,
        "expected at least 10 grammar rules in parser.rs, found {rules:?}"
    );
    for rule in &rules {
        assert!(
            spec.contains(&normalize(rule)),
            "ir-spec/language.md lacks the grammar rule\n  {rule}"
        );
    }
}

/// The rendered error quoted in `ir-spec/language.md` §10 is what the code renders.
#[test]
fn language_spec_error_example_is_current() {
    let source = "model m {\n  input x: f32[3, 32, 32]\n  y = bconv2d(x, 64, kernel=3, pad=1)\n  output y\n}\n";
    let error = onebit::text::parse("bad.bnn", source.as_bytes())
        .expect_err("a bconv2d on f32 must not type-check")
        .to_string();
    let spec = read("ir-spec/language.md");
    assert!(
        spec.contains(source),
        "language.md lost the erroneous source"
    );
    assert!(
        spec.contains(&error),
        "language.md §10 does not show the current rendering:\n{error}"
    );
}
