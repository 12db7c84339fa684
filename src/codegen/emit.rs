//! A thin layer over Cranelift's `FunctionBuilder` for the kernels: integer
//! constants, addressing, counted loops and constant data.
//!
//! Every kernel is a step function `fn(arena, io, lo, hi)`: `arena` is the
//! activation memory of one sample, `io` a table of pointers to the current
//! sample of each model input then output, and `lo..hi` the range of work
//! units (pixel tiles, rows, positions) this call computes. Loops over units
//! are runtime loops; shapes inside a unit are constants.
//!
//! Constant data and machine-code kernels (`kernels::wide`) go into the same
//! module through a [`Sink`], so the JIT and object files carry both.

use cranelift_codegen::ir::{
    FuncRef, Function, GlobalValue, InstBuilder, MemFlagsData, Type, Value, condcodes::IntCC, types,
};
use cranelift_frontend::{FunctionBuilder, Variable};

use super::CodegenError;

/// Where a step function's constant data and machine-code kernels go: the
/// module being built.
pub trait Sink {
    /// Declares a constant data object (64-byte aligned, read-only) and
    /// returns its global value inside `func`.
    fn data(&mut self, bytes: Box<[u8]>, func: &mut Function) -> Result<GlobalValue, CodegenError>;
    /// Defines a machine-code function from `bytes` (a leaf taking `params`
    /// `i64` arguments in the ISA's default calling convention, returning
    /// nothing, position independent, without relocations) and returns a
    /// reference to call it from `func`. `listing` is its disassembly.
    fn code(
        &mut self,
        bytes: &[u8],
        params: usize,
        listing: String,
        func: &mut Function,
    ) -> Result<FuncRef, CodegenError>;
}

/// The function being built, with its four parameters.
pub struct Fx<'a, 'd> {
    /// The Cranelift builder.
    pub b: FunctionBuilder<'a>,
    /// Base of the sample's activation arena.
    pub arena: Value,
    /// Table of sample pointers: model inputs, then outputs.
    pub io: Value,
    /// First work unit.
    pub lo: Value,
    /// One past the last work unit.
    pub hi: Value,
    sink: &'d mut dyn Sink,
}

/// Flags for activation and weight accesses: never trapping (the planner
/// keeps every access in bounds), not necessarily aligned.
pub fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Little-endian flags, for the bitcasts between vector lane types (whose
/// meaning depends on the byte order).
pub fn le() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

impl<'a, 'd> Fx<'a, 'd> {
    /// Wraps a builder positioned in the entry block whose parameters are
    /// `(arena, io, lo, hi)`.
    pub fn new(b: FunctionBuilder<'a>, params: [Value; 4], sink: &'d mut dyn Sink) -> Fx<'a, 'd> {
        let [arena, io, lo, hi] = params;
        Fx {
            b,
            arena,
            io,
            lo,
            hi,
            sink,
        }
    }

    /// A machine-code kernel (see [`Sink::code`]) callable from this function.
    pub fn code(
        &mut self,
        bytes: &[u8],
        params: usize,
        listing: String,
    ) -> Result<FuncRef, CodegenError> {
        self.sink.code(bytes, params, listing, self.b.func)
    }

    /// An `i64` constant.
    pub fn ic(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// A constant of type `ty` (an integer type).
    pub fn icty(&mut self, ty: Type, v: i64) -> Value {
        self.b.ins().iconst(ty, v)
    }

    /// An `f32` constant.
    pub fn fc(&mut self, v: f32) -> Value {
        self.b.ins().f32const(v)
    }

    /// `base + off`.
    pub fn add_imm(&mut self, base: Value, off: i64) -> Value {
        if off == 0 {
            base
        } else {
            self.b.ins().iadd_imm_s(base, off)
        }
    }

    /// `a * k` for a constant `k`.
    pub fn mul_imm(&mut self, a: Value, k: i64) -> Value {
        if k == 1 {
            a
        } else {
            self.b.ins().imul_imm_s(a, k)
        }
    }

    /// The arena address at byte offset `off`.
    pub fn arena_at(&mut self, off: usize) -> Value {
        self.add_imm(self.arena, off as i64)
    }

    /// The `k`-th pointer of the io table.
    pub fn io_ptr(&mut self, k: usize) -> Value {
        self.b
            .ins()
            .load(types::I64, mem(), self.io, (8 * k) as i32)
    }

    /// Loads `ty` from `addr + off`.
    pub fn load(&mut self, ty: Type, addr: Value, off: i64) -> Value {
        self.b.ins().load(ty, mem(), addr, off as i32)
    }

    /// Stores `v` at `addr + off`.
    pub fn store(&mut self, v: Value, addr: Value, off: i64) {
        self.b.ins().store(mem(), v, addr, off as i32);
    }

    /// Read-only constant data, 64-byte aligned; returns its address.
    pub fn data(&mut self, bytes: Vec<u8>) -> Result<Value, CodegenError> {
        let gv = self.sink.data(bytes.into_boxed_slice(), self.b.func)?;
        Ok(self.b.ins().symbol_value(types::I64, gv))
    }

    /// Constant `f32` data.
    pub fn f32_data(&mut self, v: &[f32]) -> Result<Value, CodegenError> {
        self.data(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// Constant `i32` data.
    pub fn i32_data(&mut self, v: &[i32]) -> Result<Value, CodegenError> {
        self.data(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// A fresh variable of type `ty` holding `init`.
    pub fn var(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    /// `for i in (lo..hi).step_by(step) { body(i) }` with runtime bounds.
    pub fn for_range(
        &mut self,
        lo: Value,
        hi: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let header = self.b.create_block();
        let body_block = self.b.create_block();
        let exit = self.b.create_block();
        let i = self.b.append_block_param(header, types::I64);
        self.b.ins().jump(header, &[lo.into()]);
        self.b.switch_to_block(header);
        let go = self.b.ins().icmp(IntCC::SignedLessThan, i, hi);
        self.b.ins().brif(go, body_block, &[], exit, &[]);
        self.b.switch_to_block(body_block);
        body(self, i)?;
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// `for i in 0..n { body(i) }`; a single iteration is emitted inline.
    pub fn for_n(
        &mut self,
        n: usize,
        mut body: impl FnMut(&mut Self, Value) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        match n {
            0 => Ok(()),
            1 => {
                let zero = self.ic(0);
                body(self, zero)
            }
            _ => {
                let lo = self.ic(0);
                let hi = self.ic(n as i64);
                self.for_range(lo, hi, 1, body)
            }
        }
    }

    /// `for u in lo..hi` over this call's work units.
    pub fn for_units(
        &mut self,
        body: impl FnMut(&mut Self, Value) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let (lo, hi) = (self.lo, self.hi);
        self.for_range(lo, hi, 1, body)
    }

    /// `if cond { then } else { otherwise }`, `cond` an integer condition
    /// (non-zero is true).
    pub fn if_else(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Self) -> Result<(), CodegenError>,
        otherwise: impl FnOnce(&mut Self) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let (yes, no, join) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.ins().brif(cond, yes, &[], no, &[]);
        self.b.switch_to_block(yes);
        then(self)?;
        self.b.ins().jump(join, &[]);
        self.b.switch_to_block(no);
        otherwise(self)?;
        self.b.ins().jump(join, &[]);
        self.b.switch_to_block(join);
        Ok(())
    }

    /// `if cond { then }`.
    pub fn when(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Self) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        self.if_else(cond, then, |_| Ok(()))
    }

    /// Fills `n` bytes at `addr` with zeros (8 bytes at a time; `n` is a
    /// multiple of 8 wherever this is used, the rest byte by byte).
    pub fn zero_bytes(&mut self, addr: Value, n: usize) {
        let z = self.ic(0);
        let mut off = 0;
        while off + 8 <= n {
            self.store(z, addr, off as i64);
            off += 8;
        }
        let z8 = self.icty(types::I8, 0);
        while off < n {
            self.store(z8, addr, off as i64);
            off += 1;
        }
    }
}
