//! Multiply-accumulate counts of a network at a given input size, read off the network's own
//! layers (kernel sizes, strides, paddings, widths), the way papers count "FLOPs": one
//! multiply-add per weight use in convolutions and linear layers; batch norm, activations,
//! pooling and additions are not counted.

use burn::module::{ModuleVisitor, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::prelude::*;

use crate::network::Network;

fn conv_out(conv: &Conv2d<impl Backend>, h: usize, w: usize) -> (usize, usize) {
    let out = |size: usize, k: usize, s: usize, d: usize, pad: (usize, usize)| (size + pad.0 + pad.1 - d * (k - 1) - 1) / s + 1;
    let [kh, kw] = conv.kernel_size;
    let [sh, sw] = conv.stride;
    let [dh, dw] = conv.dilation;
    match conv.padding {
        PaddingConfig2d::Same => (h.div_ceil(sh), w.div_ceil(sw)),
        PaddingConfig2d::Valid => (out(h, kh, sh, dh, (0, 0)), out(w, kw, sw, dw, (0, 0))),
        PaddingConfig2d::Explicit(t, l, b, r) => (out(h, kh, sh, dh, (t, b)), out(w, kw, sw, dw, (l, r))),
    }
}

/// MACs of one convolution at input `h x w`, and its output size.
fn conv_macs(conv: &Conv2d<impl Backend>, h: usize, w: usize) -> (u64, usize, usize) {
    let [out_ch, in_per_group, kh, kw] = conv.weight.dims();
    let (oh, ow) = conv_out(conv, h, w);
    ((out_ch * in_per_group * kh * kw * oh * ow) as u64, oh, ow)
}

fn linear_macs(l: &Linear<impl Backend>) -> u64 {
    let [i, o] = l.weight.dims();
    (i * o) as u64
}

struct Learnable {
    count: usize,
    field: Vec<String>,
}

impl<B: Backend> ModuleVisitor<B> for Learnable {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.field.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.field.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = self.field.last().map(String::as_str).unwrap_or("");
        if name != "running_mean" && name != "running_var" {
            self.count += param.val().shape().num_elements();
        }
    }
}

/// Learnable parameters (burn's `num_params` also counts batch-norm running statistics; papers
/// and `torch`'s `parameters()` do not).
pub fn learnable_params<B: Backend, M: Module<B>>(module: &M) -> usize {
    let mut v = Learnable { count: 0, field: Vec::new() };
    module.visit(&mut v);
    v.count
}

/// Multiply-accumulates of one forward pass of one `side x side` image.
pub fn forward_macs<B: Backend>(net: &Network<B>, side: usize) -> u64 {
    let (mut h, mut w) = (side, side);
    let mut total = 0u64;
    let mut conv = |c: &Conv2d<B>, h: &mut usize, w: &mut usize| {
        let (m, oh, ow) = conv_macs(c, *h, *w);
        total += m;
        (*h, *w) = (oh, ow);
    };
    match net {
        Network::ResNet(n) => {
            conv(&n.conv1, &mut h, &mut w);
            // 3x3 max pool, stride 2, padding 1.
            (h, w) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
            for block in n.layer1.iter().chain(&n.layer2).chain(&n.layer3).chain(&n.layer4) {
                let (bh, bw) = (h, w);
                if let Some(d) = &block.downsample {
                    let (mut dh, mut dw) = (bh, bw);
                    conv(&d.conv, &mut dh, &mut dw);
                }
                conv(&block.conv1, &mut h, &mut w);
                conv(&block.conv2, &mut h, &mut w);
                if let Some(c3) = &block.conv3 {
                    conv(c3, &mut h, &mut w);
                }
            }
            total + linear_macs(&n.fc)
        }
        Network::Vgg16(n) => {
            let ends = [1, 3, 6, 9];
            for (i, c) in n.convs.iter().enumerate() {
                conv(c, &mut h, &mut w);
                if ends.contains(&i) {
                    (h, w) = (h / 2, w / 2);
                }
            }
            total + linear_macs(&n.head)
        }
        Network::EfficientNetLite(n) => {
            conv(&n.conv_stem, &mut h, &mut w);
            for b in &n.blocks {
                if let Some(e) = &b.expand_conv {
                    conv(e, &mut h, &mut w);
                }
                conv(&b.depthwise_conv, &mut h, &mut w);
                conv(&b.project_conv, &mut h, &mut w);
            }
            conv(&n.conv_head, &mut h, &mut w);
            total + linear_macs(&n.fc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackboneKind, NetworkConfig};
    use burn::backend::Flex;

    #[test]
    fn known_parameter_and_mac_counts() {
        let device = Default::default();
        // torchvision's published counts: ResNet-18 11,689,512 params / 1.81 GMACs, ResNet-50
        // 25,557,032 / 4.09 GMACs (224 x 224, 1000 classes).
        let r18 = NetworkConfig::new(BackboneKind::ResNet18).init::<Flex>(&device);
        assert_eq!(learnable_params(&r18), 11_689_512);
        let g = forward_macs(&r18, 224) as f64 / 1e9;
        assert!((g - 1.81).abs() < 0.01, "{g}");
        let r50 = NetworkConfig::new(BackboneKind::ResNet50).init::<Flex>(&device);
        assert_eq!(learnable_params(&r50), 25_557_032);
        let g = forward_macs(&r50, 224) as f64 / 1e9;
        assert!((g - 4.09).abs() < 0.01, "{g}");
        // EfficientNet-Lite0: 4,652,008 parameters (the real checkpoint's tensors, without
        // batch-norm statistics); about 0.4 GMACs at 224.
        let e = NetworkConfig::new(BackboneKind::EfficientNetLite0).init::<Flex>(&device);
        assert_eq!(learnable_params(&e), 4_652_008);
        let g = forward_macs(&e, 224) as f64 / 1e9;
        assert!((0.38..0.42).contains(&g), "{g}");
    }
}
