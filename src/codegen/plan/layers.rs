//! The planner's steps for one layer each: an elementwise op, a binary
//! convolution or dense layer (with its epilogue and padding), a real one,
//! a pooling.

use super::*;

impl<'g> Planner<'g> {
    pub(super) fn elementwise(
        &mut self,
        id: NodeId,
        name: &str,
        operands: &[NodeId],
        op: EwOp,
        dims: &[usize],
    ) {
        let srcs: Vec<BufId> = operands.iter().map(|&o| self.as_f32(o).buf).collect();
        let dst = self.tensor(DType::F32, dims);
        let s = self.push(
            name,
            Step::Elementwise {
                srcs,
                dst: dst.buf,
                pos: dst.pos,
                c: dst.c,
                op,
                pack: false,
                keep: None,
                padded: None,
            },
        );
        self.producer.insert(id, s);
        self.values.insert(id, dst);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn binconv(
        &mut self,
        id: NodeId,
        name: &str,
        g: ConvGeometry,
        pad_value: PadValue,
        neg: Vec<bool>,
        epi: Epilogue,
        dims: &[usize],
    ) -> Result<(), CodegenError> {
        let x = self.graph.operands(id)[0];
        let src = self.values[&x].clone();
        let (c, h, wd) = match self.graph.node(x).ty.dims() {
            [c, h, w] => (*c, *h, *w),
            [k] => (*k, 1, 1),
            _ => {
                return Err(CodegenError::Internal(format!(
                    "`{name}`: bad operand rank"
                )));
            }
        };
        let groups = g.groups;
        let cg = c / groups;
        let cwg = cg.div_ceil(64);
        let aligned = groups == 1 || cg.is_multiple_of(64);
        let needs_prep = g.pad != [0, 0] || !aligned;
        let prepared = if needs_prep
            && !(g.pad != [0, 0] && self.try_pack_padded(x, [h, wd], g.pad, aligned))
        {
            self.pad_step(name, &src, [h, wd], g.pad, (groups, cg, cwg))
        } else {
            src.buf
        };
        let (oh, ow) = (
            dims.get(1).copied().unwrap_or(1),
            dims.get(2).copied().unwrap_or(1),
        );
        let pixels = oh * ow;
        let o = g.out_channels;
        let wide = self.opts.wide.map(|isa| {
            crate::codegen::kernels::wide::Tile::choose(isa, (o / groups).div_ceil(16), pixels)
        });
        let nr = match wide {
            Some(t) => t.nr,
            None if pixels >= 2 => 2,
            None => 1,
        };
        let bits_out = epi.bits();
        let dst_t = self.tensor(if bits_out { DType::Bit } else { DType::F32 }, dims);
        let px_bytes = if bits_out { 8 * o.div_ceil(64) } else { 4 * o };
        self.bufs[dst_t.buf] = (px_bytes * pixels.div_ceil(nr) * nr).div_ceil(64) * 64;
        let zero_pad =
            (pad_value == PadValue::Zero && g.pad != [0, 0]).then_some([g.pad[0], g.pad[1], h, wd]);
        let step = BinConv {
            src: prepared,
            wp: wd + 2 * g.pad[1],
            xw: groups * cwg,
            groups,
            cg,
            cwg,
            o,
            k: g.kernel,
            s: g.stride,
            d: g.dilation,
            out: [oh, ow],
            neg,
            zero_pad,
            epi,
            dst: dst_t.buf,
            nr,
            scalar: self.opts.scalar_popcount,
            wide,
            residual: None,
        };
        let s = self.push(name, Step::BinConv(step));
        self.producer.insert(id, s);
        self.values.insert(id, dst_t);
        Ok(())
    }

    pub(super) fn floatconv(
        &mut self,
        id: NodeId,
        name: &str,
        g: ConvGeometry,
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
        dims: &[usize],
    ) -> Result<(), CodegenError> {
        let x = self.graph.operands(id)[0];
        let src = self.as_f32(x);
        let (c, h, wd) = match self.graph.node(x).ty.dims() {
            [c, h, w] => (*c, *h, *w),
            [k] => (*k, 1, 1),
            _ => {
                return Err(CodegenError::Internal(format!(
                    "`{name}`: bad operand rank"
                )));
            }
        };
        let prepared = if g.pad == [0, 0] || self.try_pad_input(x, g.pad) {
            src.buf
        } else {
            self.pad_step(name, &src, [h, wd], g.pad, (1, 0, 0))
        };
        let (oh, ow) = (
            dims.get(1).copied().unwrap_or(1),
            dims.get(2).copied().unwrap_or(1),
        );
        let pixels = oh * ow;
        let nr = if pixels >= 2 { 2 } else { 1 };
        let fma = self.opts.fma.then(|| {
            crate::codegen::kernels::wide::fconv::FTile::choose(
                (g.out_channels / g.groups).div_ceil(16),
                ow,
            )
        });
        let dst = self.tensor(DType::F32, dims);
        self.bufs[dst.buf] = (4 * g.out_channels * pixels.div_ceil(nr) * nr).div_ceil(64) * 64;
        let step = FloatConv {
            src: prepared,
            wp: wd + 2 * g.pad[1],
            c,
            groups: g.groups,
            o: g.out_channels,
            k: g.kernel,
            s: g.stride,
            d: g.dilation,
            out: [oh, ow],
            w,
            bias,
            dst: dst.buf,
            nr,
            fma,
            post: Vec::new(),
            bits: false,
        };
        let s = self.push(name, Step::FloatConv(step));
        self.producer.insert(id, s);
        self.values.insert(id, dst);
        Ok(())
    }

    pub(super) fn pool(
        &mut self,
        id: NodeId,
        name: &str,
        x: NodeId,
        pa: PoolAttrs,
        max: bool,
        dims: &[usize],
    ) -> Result<(), CodegenError> {
        let raw = self.values[&x].clone();
        let bits = max && raw.dtype == DType::Bit;
        let src = if bits { raw } else { self.as_f32(x) };
        let [c, h, wd] = *self.graph.node(x).ty.dims() else {
            return Err(CodegenError::Internal(format!(
                "`{name}`: bad operand rank"
            )));
        };
        let dst = self.tensor(if bits { DType::Bit } else { DType::F32 }, dims);
        let s = self.push(
            name,
            Step::Pool {
                src: src.buf,
                hw: [h, wd],
                pad: pa.pad,
                c,
                kind: if bits {
                    PoolKind::MaxBits
                } else if max {
                    PoolKind::Max
                } else {
                    PoolKind::Avg
                },
                k: pa.kernel,
                s: pa.stride,
                out: [dims[1], dims[2]],
                dst: dst.buf,
            },
        );
        self.producer.insert(id, s);
        self.values.insert(id, dst);
        Ok(())
    }
}
