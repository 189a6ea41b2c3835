//! On the CPU backend the seeded weights are the ones its own seeded RNG gives, drawn in field
//! order, so runs started before the weights were drawn on the host keep theirs. A test binary
//! of its own: the backend's RNG is global to the process, and other tests drawing from it on
//! other threads would interleave with the draws compared here.

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use memr2_policy::TransformerConfig;

struct Collect(Vec<f32>);

impl ModuleVisitor<Flex> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Flex, D>>) {
        self.0.extend(param.val().into_data().iter::<f32>());
    }
}

#[test]
fn seeded_weights_are_the_cpu_backends_own() {
    let device = Default::default();
    for config in [
        TransformerConfig::tiny(61),
        TransformerConfig::tiny_sized(300, 64, 2, 4),
    ] {
        let mut host = Collect(Vec::new());
        config.init_seeded::<Flex>(21, &device).visit(&mut host);
        <Flex as Backend>::seed(&device, 21);
        let mut backend = Collect(Vec::new());
        config.init::<Flex>(&device).visit(&mut backend);
        assert_eq!(host.0, backend.0);
    }
}
