"""The extraction speed-ups must not change results: BatchNorm folding, batch layout, file order."""

from pathlib import Path

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from bottleneck_features.decode import collate
from bottleneck_features.fold import fold_batchnorm
from bottleneck_features.images import find_images
from bottleneck_features.runtime import cpu_runtime
from conftest import write_image


class ConvNorm(nn.Module):
    def __init__(self, norm: nn.Module, reuse: bool = False, inplace: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm, self.reuse, self.inplace = nn.Conv2d(3, 4, 3, stride=2), norm, reuse, inplace
        with torch.no_grad():
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.inplace:
            y.relu_()
        z = self.norm(y)
        return (z + y if self.reuse else z).mean(dim=(2, 3))


@pytest.mark.parametrize("norm", [nn.BatchNorm2d(4), BatchNormAct2d(4, act_layer=nn.ReLU6)])
def test_batchnorm_folds_into_conv_with_same_output(norm: nn.Module) -> None:
    model = ConvNorm(norm).eval()
    folded = fold_batchnorm(model, 16)
    assert folded is not model and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(model.norm, type(norm))  # the original is left alone
    x = torch.randn(5, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_no_fold_when_the_conv_output_is_used_elsewhere_or_there_is_no_norm() -> None:
    for tricky in (ConvNorm(nn.BatchNorm2d(4), reuse=True).eval(), ConvNorm(nn.BatchNorm2d(4), inplace=True).eval()):
        assert fold_batchnorm(tricky, 16) is tricky
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    assert fold_batchnorm(plain, 16) is plain


class Untraceable(ConvNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + float(x.sum())  # a meta tensor has no value


def test_a_model_that_cannot_be_traced_stays_unfolded_and_says_so() -> None:
    model = Untraceable(nn.BatchNorm2d(4)).eval()
    with pytest.warns(RuntimeWarning, match="Untraceable: BatchNorm left unfolded"):
        assert fold_batchnorm(model, 16) is model


def test_collate_gives_a_channels_last_batch() -> None:
    images = [torch.randint(0, 255, (6, 5, 3), dtype=torch.uint8).permute(2, 0, 1) for _ in range(3)]
    indices, batch, bad = collate([(0, images[0], ""), (1, None, "broken"), (2, images[2], "")])
    assert indices == [0, 2] and bad == [(1, "broken")]
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, torch.stack([images[0], images[2]]))


def test_cpu_runtime_restores_threads() -> None:
    before = torch.get_num_threads()
    with cpu_runtime(torch.device("cpu"), 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_find_images_sorts_like_paths(tmp_path: Path) -> None:
    for name in ["a-c/1.jpg", "a/b/2.jpg", "a/3.jpg", "a/B/4.png", "a.b/5.jpg"]:
        write_image(tmp_path / name, seed=1, fmt="PNG")
    found = find_images(tmp_path)
    assert found == sorted(found) and len(found) == 5
