//! Rendered diagnostics for bad model files, snapshot-tested as the user sees them.
//!
//! Each `tests/bad/NAME.bnn` holds one mistake. The test parses it under the name
//! `tests/bad/NAME.bnn` (relative to the repository root, so the snapshots do not
//! depend on the machine), snapshots the rendered error in
//! `tests/snapshots/errors__bad_inputs_render_located_diagnostics@NAME.bnn.snap`,
//! and checks that the text locates the error as `tests/bad/NAME.bnn:LINE:COL`.
//!
//! Regenerate after an intended change with
//! `INSTA_UPDATE=always cargo test --test errors`, then read every changed
//! snapshot: the caret on the right token, the message saying what was expected.

use std::path::Path;

#[test]
fn bad_inputs_render_located_diagnostics() {
    insta::glob!("bad/*.bnn", |path| {
        let bytes = std::fs::read(path).unwrap();
        let name = format!("tests/bad/{}", path.file_name().unwrap().to_str().unwrap());
        let error = match onebit::text::parse(&name, &bytes) {
            Ok(_) => panic!("{name} parsed without an error"),
            Err(e) => e,
        };
        let text = error.to_string();
        let (line, col) = error
            .line_col()
            .unwrap_or_else(|| panic!("{name}: the error has no location:\n{text}"));
        let locator = format!("{name}:{line}:{col}");
        assert!(
            text.contains(&locator),
            "{name}: the rendered error lacks `{locator}`:\n{text}"
        );
        insta::assert_snapshot!(text);
    });
}

#[test]
fn there_are_enough_bad_inputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let count = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "bnn"))
        })
        .count();
    assert!(count >= 30, "only {count} bad inputs");
}
