"""torchvision's zoo (random weights, no download): every conv drawn, every activation right.

The reference is independent of the monitor, which follows tensors at run time: here
torch.fx traces the model (torchvision's feature-extraction tracer, without its leaf
blocks so every conv is a node), a graph walk maps each conv to its activation node,
and an fx interpreter records that node's output on the same probe.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer

from conftest import Classifier, FilterMonitor, pl, read_events, trainer_kwargs

MODELS = {
    "resnet18": {},
    "resnet50": {},
    "vgg11_bn": {},
    "mobilenet_v2": {},
    "mobilenet_v3_small": {},
    "efficientnet_b0": {},
    "densenet121": {},
    "squeezenet1_1": {},
    "shufflenet_v2_x0_5": {},
    "regnet_x_400mf": {},
    "convnext_tiny": {},
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
IMAGE_SIZE = {"inception_v3": 80}  # its stem needs at least 75 pixels

NORMALIZATION_MODULES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.Dropout, nn.Dropout2d)
NORMALIZATION_FUNCTIONS = {F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, F.dropout}
ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.LeakyReLU, nn.Hardtanh, nn.ELU,
    nn.Sigmoid, nn.Hardsigmoid,  # squeeze-and-excitation gates
)
ACTIVATION_FUNCTIONS = {
    F.relu, torch.relu, torch.relu_, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu, F.hardsigmoid, torch.sigmoid,
}
ACTIVATION_METHODS = {"relu", "relu_"}


def activation_nodes(model: nn.Module) -> tuple[dict[str, torch.fx.Node], list[str], torch.fx.GraphModule]:
    """Conv name -> its activation node, by walking the traced graph; the conv names; the traced module."""
    tracer = NodePathTracer()
    graph = tracer.trace(model)
    modules = dict(model.named_modules())
    conv_to_activation: dict[str, torch.fx.Node] = {}
    convs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        convs.append(node.target)
        current = node
        while current.users:
            first_user = min(current.users, key=lambda user: list(graph.nodes).index(user))
            kind = node_kind(first_user, modules)
            if kind == "pass":
                current = first_user
                continue
            if kind == "activation":
                conv_to_activation[node.target] = first_user
            break
    return conv_to_activation, convs, torch.fx.GraphModule(model, graph)


class Recorder(torch.fx.Interpreter):
    """Runs the traced graph and keeps a copy of the chosen nodes' outputs."""

    def __init__(self, module: torch.fx.GraphModule, nodes: dict[str, torch.fx.Node]) -> None:
        super().__init__(module)
        self.wanted = {node: name for name, node in nodes.items()}
        self.outputs: dict[str, torch.Tensor] = {}

    def run_node(self, node: torch.fx.Node):
        result = super().run_node(node)
        if node in self.wanted:
            self.outputs[self.wanted[node]] = result.clone()  # before any later in-place op
        return result


def node_kind(node, modules) -> str:
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, NORMALIZATION_MODULES):
            return "pass"
        if isinstance(module, ACTIVATION_MODULES):
            return "activation"
    if node.op == "call_function":
        if node.target in NORMALIZATION_FUNCTIONS:
            return "pass"
        if node.target in ACTIVATION_FUNCTIONS:
            return "activation"
        if node.target is operator.getitem:
            return "other"
    if node.op == "call_method" and node.target in ACTIVATION_METHODS:
        return "activation"
    return "other"


class ZooClassifier(Classifier):
    validation_step = None  # type: ignore[assignment]

    def __init__(self, name: str) -> None:
        super().__init__(torchvision.models.get_model(name, weights=None, num_classes=3, **MODELS[name]), lr=0.01)


class SmallImages(pl.LightningDataModule):
    def __init__(self, size: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(8, 3, size, size, generator=generator)
        self.labels = torch.randint(0, 3, (8,), generator=generator)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.images, self.labels), batch_size=4)


@pytest.mark.parametrize("name", list(MODELS))
def test_zoo_model_in_a_trainer(name, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = ZooClassifier(name)
    monitor = FilterMonitor(every_n_steps=2, probe_size=2, max_filters=8, max_images=1)
    snapshots = []
    original = monitor.engine.snapshot
    monkeypatch.setattr(monitor.engine, "snapshot", lambda *args, **kwargs: snapshots.append(original(*args, **kwargs)))
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=2, max_epochs=1))
    trainer.fit(model, datamodule=SmallImages(IMAGE_SIZE.get(name, 64)))

    net = model.net.eval()
    expected_activation, convs, traced = activation_nodes(net)
    snapshot = snapshots[-1].result()
    assert snapshot.step == 2
    assert list(snapshot.layers) == [f"net.{conv}" for conv in convs]
    images = read_events(trainer.logger.log_dir).images
    for conv in convs:
        assert 2 in images[f"filterviz/weights/net.{conv}"], conv
    with_activation = {f"net.{conv}" for conv in expected_activation}
    assert {name for name, layer in snapshot.layers.items() if layer.activation} == with_activation
    # Convs whose output meets a residual sum or a concatenation first get their signed output drawn.
    pre_activation = {name for name, layer in snapshot.layers.items() if layer.pre_activation}
    assert not pre_activation & with_activation
    drawn = {tag.split("/", 2)[2] for tag in images if tag.startswith("filterviz/activations/")}
    assert drawn == with_activation | pre_activation

    # The same probe at the same (final) weights, through the traced graph.
    recorder = Recorder(traced, expected_activation)
    with torch.no_grad():
        recorder.run(monitor.probe[0])
    assert set(recorder.outputs) == set(expected_activation)
    for conv, activation in recorder.outputs.items():
        captured = snapshot.layers[f"net.{conv}"]
        torch.testing.assert_close(captured.channel_max, activation.amax(dim=(0, 2, 3)), msg=conv)
        torch.testing.assert_close(captured.channel_mean_abs, activation.abs().mean(dim=(0, 2, 3)), msg=conv)


def test_resnet18_residual_convs_get_signed_maps_of_their_conv_and_bn_output(tmp_path):
    """conv2 and the downsample conv meet the residual sum before any ReLU: their output
    through BatchNorm is drawn, signed, centred at zero, at the first (traced) snapshot and
    at the next (hooked) one, pixel for pixel as drawn from an independent forward."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_filterviz import FilterVisualizer
    from lightning_filterviz.drawing.render import SIGNED_COLORMAP, activation_grid

    model = torchvision.models.resnet18(num_classes=10).eval()
    for module in model.modules():  # BatchNorm that does something, so conv alone would differ
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    probe = torch.randn(2, 3, 64, 64)
    outputs = {
        "layer1.0.conv2": "layer1.0.bn2",
        "layer2.0.conv2": "layer2.0.bn2",
        "layer2.0.downsample.0": "layer2.0.downsample.1",
    }
    writer = SummaryWriter(str(tmp_path))
    visualizer = FilterVisualizer(writer, layers=[*outputs, "layer1.0.conv1"], max_filters=16, dead_patience=1)
    snapshots = [visualizer.snapshot(model, probe, step) for step in range(2)]
    visualizer.close()
    writer.close()

    expected, modules = {}, dict(model.named_modules())

    def keeper(conv):
        def keep(module, args, output):  # returns None: a hook's return value would replace the output
            expected[conv] = output.clone()  # a copy: the residual sum then writes into the output

        return keep

    handles = [modules[bn].register_forward_hook(keeper(conv)) for conv, bn in outputs.items()]
    with torch.no_grad():
        model(probe)
    for handle in handles:
        handle.remove()
    images = read_events(tmp_path).images
    for conv in outputs:
        assert expected[conv].min() < 0 < expected[conv].max()
        pixels = activation_grid(expected[conv][:2, :16], colormap=SIGNED_COLORMAP, signed=True).to_rgb()
        for snapshot in snapshots:
            layer = snapshot.layers[conv]
            assert layer.pre_activation and layer.activation is None and not layer.zeroing
            torch.testing.assert_close(layer.channel_mean_abs, expected[conv].abs().mean(dim=(0, 2, 3)))
            assert (images[f"filterviz/activations/{conv}"][snapshot.step] == pixels).all()
    assert set(visualizer.dead_filters) == {"layer1.0.conv1"}  # "dead" is judged for ReLU convs only
    assert set(visualizer.dormant_filters) == set(outputs) | {"layer1.0.conv1"}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_a_single_image_with_one_pixel_deep_maps_finds_the_same_activations(name):
    """One probe image whose deepest maps are 1x1: a residual (ResNet) or an attention map
    (squeeze-and-excitation) then has one value per channel, like a normalization's
    constant, and must still not be followed as one."""
    from lightning_filterviz.capture.probe_capture import capture_snapshot
    from lightning_filterviz.capture.conv_layers import select_conv_layers

    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None, num_classes=3).eval()
    probe = torch.randn(1, 3, 32, 32)
    snapshot = capture_snapshot(net, probe, select_conv_layers(net), 0)
    expected_activation, _, traced = activation_nodes(net)
    assert {name for name, layer in snapshot.layers.items() if layer.activation} == set(expected_activation)
    recorder = Recorder(traced, expected_activation)
    with torch.no_grad():
        recorder.run(probe)
    for conv, activation in recorder.outputs.items():
        torch.testing.assert_close(snapshot.layers[conv].channel_max, activation.amax(dim=(0, 2, 3)), msg=conv)
