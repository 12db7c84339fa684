//! The runtime: a compiled model that owns its code and weights and runs
//! batches, on one thread or several.
//!
//! Each sample runs through the step functions in order over a per-thread
//! activation arena (planned at compile time, reused across layers by
//! liveness). With several threads, a batch of at least as many samples is
//! split by samples; smaller batches split every layer's work units
//! (pixel tiles, rows, positions) between threads, with a spin barrier
//! between layers.
//!
//! This module holds the crate's only `unsafe`: calling generated code.

pub mod pool;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cranelift_jit::JITModule;

use crate::codegen::{self, CodegenError, Lowered, Options};
use crate::ir::{Params, Verified};
use pool::{Barrier, Pool};

/// A step function: `(arena, io table, lo, hi)`.
type StepFn = unsafe extern "C" fn(*mut u8, *const *mut f32, usize, usize);

/// Why a run was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// Wrong number of input or output arrays.
    #[error("model `{model}` has {expected} {what}, found {found}")]
    Count {
        /// The model.
        model: String,
        /// "inputs" or "outputs".
        what: &'static str,
        /// Declared.
        expected: usize,
        /// Given.
        found: usize,
    },
    /// An array's length is not `batch × sample size`.
    #[error("`{name}` needs {expected} values for batch {batch}, found {found}")]
    Length {
        /// The input or output.
        name: String,
        /// `batch × per-sample elements`.
        expected: usize,
        /// Given.
        found: usize,
        /// The batch size.
        batch: usize,
    },
    /// The sizes overflow.
    #[error("batch {0} is too large")]
    TooLarge(usize),
    /// The scratch space belongs to a model with another arena size.
    #[error("the scratch space was made for another model")]
    Scratch,
}

/// One 64-byte line of arena memory.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Per-thread activation memory for [`CompiledModel::run_into`].
pub struct Scratch {
    arenas: Vec<Vec<Line>>,
    bytes: usize,
}

impl Scratch {
    /// Overwrites every byte of the scratch space with `byte`. A compiled
    /// model never reads scratch it has not written in the same run, so
    /// results do not depend on it; tests fill it with NaN patterns to check
    /// exactly that.
    pub fn fill(&mut self, byte: u8) {
        for arena in &mut self.arenas {
            arena.iter_mut().for_each(|line| *line = Line([byte; 64]));
        }
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scratch({} × {} bytes)", self.arenas.len(), self.bytes)
    }
}

/// One step of the compiled model.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The graph node it computes.
    pub node: String,
    /// Kernel kind.
    pub kind: &'static str,
    /// Work units.
    pub units: usize,
}

struct RtStep {
    f: StepFn,
    units: usize,
}

/// A model compiled to native code. `Send + Sync`: one model can serve runs
/// from many threads at once.
pub struct CompiledModel {
    name: String,
    steps: Vec<RtStep>,
    layers: Vec<Layer>,
    arena_bytes: usize,
    inputs: Vec<(String, usize)>,
    outputs: Vec<(String, usize)>,
    output_dims: Vec<Vec<usize>>,
    pool: Option<Pool>,
    compile_time: Duration,
    clif: String,
    disasm: Vec<Option<String>>,
    /// Keeps code and data alive; freed on drop.
    module: Mutex<Option<JITModule>>,
}

impl std::fmt::Debug for CompiledModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModel")
            .field("name", &self.name)
            .field("steps", &self.layers.len())
            .field("arena_bytes", &self.arena_bytes)
            .finish()
    }
}

impl CompiledModel {
    /// JIT-compiles a verified graph.
    pub fn compile(
        verified: Verified<'_>,
        params: &Params,
        options: &Options,
    ) -> Result<CompiledModel, CodegenError> {
        let start = Instant::now();
        let (module, lowered) = codegen::jit::compile(verified, params, options)?;
        let Lowered {
            plan, steps, clif, ..
        } = lowered;
        let rt: Vec<RtStep> = steps
            .iter()
            .map(|s| {
                let p = module.get_finalized_function(s.func);
                // SAFETY: `p` is a finalized function of `module` with the
                // step signature `(i64, i64, i64, i64)` in the host's C
                // calling convention (`codegen::step_signature`); `module`
                // lives as long as `self`.
                RtStep {
                    f: unsafe { std::mem::transmute::<*const u8, StepFn>(p) },
                    units: s.units,
                }
            })
            .collect();
        let layers = steps
            .iter()
            .map(|s| Layer {
                node: s.node.clone(),
                kind: s.kind,
                units: s.units,
            })
            .collect();
        let elems = |d: &Vec<usize>| d.iter().product::<usize>();
        let threads = options.threads.max(1);
        Ok(CompiledModel {
            name: verified.graph().name.clone(),
            steps: rt,
            layers,
            arena_bytes: plan.arena_bytes,
            inputs: plan
                .inputs
                .iter()
                .map(|(n, d)| (n.clone(), elems(d)))
                .collect(),
            outputs: plan
                .outputs
                .iter()
                .map(|(n, d)| (n.clone(), elems(d)))
                .collect(),
            output_dims: plan.outputs.iter().map(|(_, d)| d.clone()).collect(),
            pool: match threads {
                1 => None,
                n => {
                    Some(Pool::new(n).map_err(|e| {
                        CodegenError::Target(format!("cannot start {n} threads: {e}"))
                    })?)
                }
            },
            compile_time: start.elapsed(),
            clif,
            disasm: steps.iter().map(|s| s.disasm.clone()).collect(),
            module: Mutex::new(Some(module)),
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The steps, in execution order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Time spent compiling (planning, Cranelift, finalization).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Bytes of activation memory per thread.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Cranelift IR text (with `Options::emit_clif`).
    pub fn clif(&self) -> &str {
        &self.clif
    }

    /// Disassembly of step `i` (with `Options::disasm`).
    pub fn disasm(&self, i: usize) -> Option<&str> {
        self.disasm.get(i).and_then(|d| d.as_deref())
    }

    /// Per-sample dims of the outputs.
    pub fn output_dims(&self) -> &[Vec<usize>] {
        &self.output_dims
    }

    /// Threads used by runs.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, Pool::threads)
    }

    /// Scratch memory for [`run_into`](Self::run_into): one arena per thread.
    pub fn scratch(&self) -> Scratch {
        let lines = self.arena_bytes.div_ceil(64);
        Scratch {
            arenas: (0..self.threads())
                .map(|_| vec![Line([0; 64]); lines])
                .collect(),
            bytes: self.arena_bytes,
        }
    }

    /// Runs a model with one input and one output on `batch` samples
    /// (`[batch, ...]`, C order); returns the output.
    pub fn run(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, RunError> {
        if self.outputs.len() != 1 {
            return Err(self.count("outputs", self.outputs.len(), 1));
        }
        Ok(self.run_many(&[input], batch)?.remove(0))
    }

    /// Runs a model with any number of inputs and outputs (declaration order).
    pub fn run_many(&self, inputs: &[&[f32]], batch: usize) -> Result<Vec<Vec<f32>>, RunError> {
        let mut outs: Vec<Vec<f32>> = Vec::with_capacity(self.outputs.len());
        for (_, e) in &self.outputs {
            let n = e.checked_mul(batch).ok_or(RunError::TooLarge(batch))?;
            outs.push(vec![0.0; n]);
        }
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
        let mut scratch = self.scratch();
        self.run_into(inputs, &mut refs, batch, &mut scratch)?;
        Ok(outs)
    }

    fn count(&self, what: &'static str, expected: usize, found: usize) -> RunError {
        RunError::Count {
            model: self.name.clone(),
            what,
            expected,
            found,
        }
    }

    /// Runs into caller-provided outputs with caller-provided scratch; does
    /// not allocate.
    pub fn run_into(
        &self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        batch: usize,
        scratch: &mut Scratch,
    ) -> Result<(), RunError> {
        self.exec(inputs, outputs, batch, scratch, None, 0..self.steps.len())
    }

    /// Runs only steps `range` (indices into [`layers`](Self::layers)), as
    /// [`run_into`](Self::run_into) does, for timing a layer on its own: the
    /// steps before `range` are assumed to have run on this `scratch` already
    /// (their results stay in the arena). An empty or out-of-range `range` is
    /// clamped.
    pub fn run_steps(
        &self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        batch: usize,
        scratch: &mut Scratch,
        range: std::ops::Range<usize>,
    ) -> Result<(), RunError> {
        let end = range.end.min(self.steps.len());
        let start = range.start.min(end);
        self.exec(inputs, outputs, batch, scratch, None, start..end)
    }

    /// Runs once, timing every step (summed over the batch); returns the
    /// per-step times in [`layers`](Self::layers) order.
    pub fn profile(
        &self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        batch: usize,
        scratch: &mut Scratch,
    ) -> Result<Vec<Duration>, RunError> {
        let mut times = vec![Duration::ZERO; self.steps.len()];
        let all = 0..self.steps.len();
        self.exec(inputs, outputs, batch, scratch, Some(&mut times), all)?;
        Ok(times)
    }

    fn check(
        &self,
        inputs: &[&[f32]],
        outputs: &[&mut [f32]],
        batch: usize,
        scratch: &Scratch,
    ) -> Result<(), RunError> {
        if inputs.len() != self.inputs.len() {
            return Err(self.count("inputs", self.inputs.len(), inputs.len()));
        }
        if outputs.len() != self.outputs.len() {
            return Err(self.count("outputs", self.outputs.len(), outputs.len()));
        }
        let lens = inputs
            .iter()
            .map(|a| a.len())
            .chain(outputs.iter().map(|a| a.len()));
        for ((name, e), found) in self.inputs.iter().chain(&self.outputs).zip(lens) {
            let expected = e.checked_mul(batch).ok_or(RunError::TooLarge(batch))?;
            if found != expected {
                return Err(RunError::Length {
                    name: name.clone(),
                    expected,
                    found,
                    batch,
                });
            }
        }
        if scratch.bytes != self.arena_bytes || scratch.arenas.is_empty() {
            return Err(RunError::Scratch);
        }
        Ok(())
    }

    fn exec(
        &self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        batch: usize,
        scratch: &mut Scratch,
        mut times: Option<&mut [Duration]>,
        range: std::ops::Range<usize>,
    ) -> Result<(), RunError> {
        self.check(inputs, outputs, batch, scratch)?;
        // Base pointers and per-sample strides (elements) of the io arrays.
        // Inputs are only read by the generated code.
        let mut bases = [(0usize, 0usize); 16];
        let mut heap: Vec<(usize, usize)>;
        let nio = inputs.len() + outputs.len();
        let io: &mut [(usize, usize)] = if nio <= bases.len() {
            &mut bases[..nio]
        } else {
            heap = vec![(0usize, 0usize); nio];
            &mut heap
        };
        for (k, a) in inputs.iter().enumerate() {
            io[k] = (a.as_ptr() as usize, self.inputs[k].1);
        }
        for (k, a) in outputs.iter_mut().enumerate() {
            io[inputs.len() + k] = (a.as_mut_ptr() as usize, self.outputs[k].1);
        }
        let io = &*io;
        let threads = scratch.arenas.len().min(self.threads()).min(8);
        let last = scratch.arenas.len() - 1;
        let mut arena_ptrs = [0usize; 8];
        for (t, p) in arena_ptrs.iter_mut().enumerate() {
            *p = scratch.arenas[t.min(last)].as_mut_ptr() as usize;
        }
        let steps = range;
        let run_samples =
            |t: usize, range: std::ops::Range<usize>, times: Option<&mut [Duration]>| {
                self.samples(arena_ptrs[t], io, range, times, steps.clone());
            };
        let pool = self.pool.as_ref().filter(|_| threads > 1 && batch > 0);
        match pool {
            Some(pool) if batch >= threads => {
                let n = threads;
                let job = |t: usize| {
                    if t < n {
                        run_samples(t, batch * t / n..batch * (t + 1) / n, None);
                    }
                };
                if !pool.run(&job) {
                    run_samples(0, 0..batch, times);
                }
            }
            Some(pool) => {
                let n = threads;
                let barrier = Barrier::new(pool.threads());
                let t0 = Mutex::new(times.as_deref_mut().map(|t| t.to_vec()));
                let job = |t: usize| {
                    for s in 0..batch {
                        let mut table = [std::ptr::null_mut::<f32>(); 16];
                        let heap_table;
                        let tab: &[*mut f32] = if io.len() <= 16 {
                            for (k, &(p, e)) in io.iter().enumerate() {
                                table[k] = (p + 4 * e * s) as *mut f32;
                            }
                            &table[..io.len()]
                        } else {
                            heap_table = io
                                .iter()
                                .map(|&(p, e)| (p + 4 * e * s) as *mut f32)
                                .collect::<Vec<_>>();
                            &heap_table
                        };
                        for (i, st) in self.steps.iter().enumerate() {
                            if !steps.contains(&i) {
                                continue;
                            }
                            let start = Instant::now();
                            if t < n {
                                let (lo, hi) = (st.units * t / n, st.units * (t + 1) / n);
                                if lo < hi {
                                    // SAFETY: the arena is this run's (threads
                                    // share it within a sample, writing
                                    // disjoint unit ranges), the table points
                                    // at live arrays of the checked lengths,
                                    // and `lo..hi` is within the step's units.
                                    unsafe {
                                        (st.f)(arena_ptrs[0] as *mut u8, tab.as_ptr(), lo, hi)
                                    };
                                }
                            }
                            barrier.wait();
                            if t == 0
                                && let Ok(mut g) = t0.lock()
                                && let Some(v) = g.as_mut()
                            {
                                v[i] += start.elapsed();
                            }
                        }
                    }
                };
                if !pool.run(&job) {
                    run_samples(0, 0..batch, times);
                } else if let (Some(out), Ok(Some(v))) = (times, t0.into_inner()) {
                    out.copy_from_slice(&v);
                }
            }
            None => run_samples(0, 0..batch, times),
        }
        Ok(())
    }

    /// Runs samples `range` one after the other on the current thread.
    fn samples(
        &self,
        arena: usize,
        io: &[(usize, usize)],
        range: std::ops::Range<usize>,
        mut times: Option<&mut [Duration]>,
        steps: std::ops::Range<usize>,
    ) {
        let mut table = [std::ptr::null_mut::<f32>(); 16];
        let mut heap = Vec::new();
        for s in range {
            let tab: &[*mut f32] = if io.len() <= 16 {
                for (k, &(p, e)) in io.iter().enumerate() {
                    table[k] = (p + 4 * e * s) as *mut f32;
                }
                &table[..io.len()]
            } else {
                heap.clear();
                heap.extend(io.iter().map(|&(p, e)| (p + 4 * e * s) as *mut f32));
                &heap
            };
            for (i, st) in self.steps.iter().enumerate() {
                if !steps.contains(&i) {
                    continue;
                }
                let start = times.as_ref().map(|_| Instant::now());
                // SAFETY: `arena` is a live arena of `arena_bytes` owned by
                // the caller's scratch for this thread only; `tab` holds one
                // pointer per input/output at sample `s`, within arrays whose
                // lengths `check` verified; `0..units` is the step's range.
                unsafe { (st.f)(arena as *mut u8, tab.as_ptr(), 0, st.units) };
                if let (Some(t), Some(s0)) = (times.as_deref_mut(), start) {
                    t[i] += s0.elapsed();
                }
            }
        }
    }
}

impl Drop for CompiledModel {
    fn drop(&mut self) {
        self.pool = None;
        if let Ok(mut m) = self.module.lock()
            && let Some(m) = m.take()
        {
            // SAFETY: the step pointers are private to `self`, which is being
            // dropped, and the pool threads that could call them are joined.
            unsafe { m.free_memory() };
        }
    }
}
