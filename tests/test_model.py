import torch

from distributed.model import LAYER_NAMES, count_parameters, gradcam_layers, resnet18, unwrap


def test_resnet18_cifar_has_exactly_11173962_parameters():
    assert count_parameters(resnet18(num_classes=10)) == 11_173_962
    assert count_parameters(resnet18(num_classes=10, dropout=0.3)) == 11_173_962  # dropout adds none


def test_forward_shapes_and_layer_names_for_gradcam():
    m = resnet18().eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    layers = gradcam_layers(m)
    assert tuple(layers) == LAYER_NAMES == ("layer1", "layer2", "layer3", "layer4")
    shapes = {}
    hooks = [mod.register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, o.shape[1:]))
             for n, mod in layers.items()]
    m(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert shapes == {"layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8), "layer4": (512, 4, 4)}


def test_dropout_is_applied_before_the_classifier_only_in_training():
    m = resnet18(dropout=0.5)
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m.linear(m.dropout(torch.ones(1, 512)))
    assert (m.dropout(torch.ones(1, 512)) == 0).any() and a.shape == (1, 10)


def test_unwrap_strips_compile_and_ddp_style_wrappers():
    m = resnet18()
    compiled = torch.compile(m)  # wrapping only: nothing compiles until the first call
    assert unwrap(compiled) is m
    assert unwrap(torch.nn.DataParallel(compiled)) is m
    assert gradcam_layers(compiled)["layer4"] is m.layer4
