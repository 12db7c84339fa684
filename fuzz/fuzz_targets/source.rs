//! Model source → parse → lower → verify → resource check → default passes;
//! before and after the passes, the printed model parses back and the
//! summary, JSON and DOT views render. Any panic or abort is a bug: bad input
//! must come back as an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onebit::ir::limits::{self, Limits};
use onebit::ir::summary::Summary;
use onebit::ir::{Params, dot, json};
use onebit::passes::{self, PassOptions, PassSelection};

fuzz_target!(|data: &[u8]| {
    let Ok(mut graph) = onebit::text::parse("fuzz.bnn", data) else {
        return;
    };
    // Smaller than the command line's default so that each run stays fast;
    // the check itself is what is under test.
    let small = Limits {
        max_memory: 64 << 20,
        ..Limits::default()
    };
    if limits::check(&graph, 1, &small).is_err() {
        return;
    }
    // Every view `check` and `ir` print.
    let views = |graph: &onebit::ir::Graph| {
        let printed = onebit::text::print(graph);
        onebit::text::parse_str(&printed).expect("the printed model parses back");
        let _ = Summary::new(graph).to_string();
        let _ = json::to_json(graph);
        let _ = dot::to_dot(graph);
    };
    views(&graph);
    let mut params = Params::init(&graph, 0);
    if let Ok(report) = passes::optimize(
        &mut graph,
        &mut params,
        &PassSelection::default_pipeline(),
        &PassOptions::default(),
        |_, _| {},
    ) {
        let _ = report.to_string();
        views(&graph);
    }
});
