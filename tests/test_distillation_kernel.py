"""ls_plugins.distillation_kernel.distillation_rows: values and hand-written gradients against
plain autograd, for every combination of inputs its interface allows."""
import pytest
import torch
import torch.nn.functional as F

from ls_plugins.distillation_kernel import LossWeights, TeacherParts, distillation_rows

K = 9
IGNORE = -100


@pytest.fixture
def rows():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 6, K, generator=g, dtype=torch.float64) * 2
    teacher_logits = torch.randn(2, 6, K, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, K, (2, 6), generator=g)
    target[1, 4:] = IGNORE
    prior = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
    return z, teacher_logits, target, prior / prior.sum()


def reference(z, target, q, *, weights, temperature, prior, log_probs):
    """(loss, nll, soft) per row by plain autograd; q dense (or None)."""
    lp = z if log_probs else torch.log_softmax(z, -1)
    safe = target.masked_fill(target.eq(IGNORE), 0)
    nll = -lp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    smooth = -(lp.mean(-1) if prior is None else lp @ prior)
    hard = (1 - weights.alpha) * nll + weights.alpha * smooth
    soft = (-(q * torch.log_softmax(z / temperature, -1)).sum(-1) if q is not None
            else torch.zeros_like(nll))
    keep = target.ne(IGNORE)
    return tuple(t * keep for t in (weights.hard * hard + weights.soft * soft, nll, soft))


def dense_topk(q, k):
    values, indices = q.topk(k, -1)
    tail = (1 - values.sum(-1)) / (K - k)
    return TeacherParts(values, indices, tail), tail.unsqueeze(-1).expand_as(q).scatter(-1, indices, values)


@pytest.mark.parametrize("log_probs", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("teacher_kind", [None, "dense", "topk"])
@pytest.mark.parametrize("with_prior", [False, True])
def test_rows_and_gradients_equal_autograd(rows, log_probs, temperature, teacher_kind, with_prior):
    z0, teacher_logits, target, prior = rows
    prior = prior if with_prior else None
    q = torch.softmax(teacher_logits / temperature, -1)
    teacher, q_dense = None, None
    if teacher_kind == "dense":
        teacher, q_dense = TeacherParts(q), q
    elif teacher_kind == "topk":
        teacher, q_dense = dense_topk(q, 3)
    weights = LossWeights(hard=0.7, soft=0.3 if teacher is not None else 0.0, alpha=0.2)
    upstream = [torch.rand(target.shape, dtype=torch.float64) for _ in range(3)]
    results = []
    for kernel in (True, False):
        leaf = z0.clone().requires_grad_(True)
        z = torch.log_softmax(leaf, -1) if log_probs else leaf
        if kernel:
            out = distillation_rows(z, target, teacher, weights=weights, temperature=temperature,
                                    prior=prior, ignore_index=IGNORE, log_probs=log_probs)
        else:
            out = reference(z, target, q_dense, weights=weights, temperature=temperature,
                            prior=prior, log_probs=log_probs)
        sum((t * u).sum() for t, u in zip(out, upstream) if t.requires_grad).backward()
        results.append((out, leaf.grad))
    (got, got_grad), (want, want_grad) = results
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(got_grad, want_grad, atol=1e-12)
    assert got_grad[target.eq(IGNORE)].abs().max() == 0


def test_logits_without_teacher_are_torch_cross_entropy(rows):
    """The interface a fused linear + cross-entropy builds on: smoothed CE straight from logits."""
    z0, _, target, _ = rows
    z, z_ref = z0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    got = distillation_rows(z, target, weights=LossWeights(alpha=0.1), ignore_index=IGNORE).loss
    want = F.cross_entropy(z_ref.reshape(-1, K), target.reshape(-1), label_smoothing=0.1,
                           ignore_index=IGNORE, reduction="none")
    assert torch.allclose(got.reshape(-1), want, atol=1e-12)
    got.sum().backward()
    want.sum().backward()
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_second_backward_and_gradcheck(rows, temperature):
    """The backward turns its forward buffers into probabilities in place; retain_graph still
    gives the same gradient twice, and finite differences agree."""
    z0, teacher_logits, target, _ = rows
    teacher = TeacherParts(torch.softmax(teacher_logits / temperature, -1))
    weights = LossWeights(hard=0.5, soft=0.5, alpha=0.1)
    z = z0.clone().requires_grad_(True)
    loss = distillation_rows(z, target, teacher, weights=weights, temperature=temperature,
                             ignore_index=IGNORE).loss.sum()
    loss.backward(retain_graph=True)
    first = z.grad.clone()
    loss.backward()
    assert torch.allclose(z.grad, 2 * first, atol=1e-12)
    small = z0[:1, :3].clone().requires_grad_(True)
    small_teacher = TeacherParts(teacher.probs[:1, :3])
    assert torch.autograd.gradcheck(
        lambda x: distillation_rows(x, target[:1, :3], small_teacher, weights=weights,
                                    temperature=temperature, ignore_index=IGNORE), (small,))


def test_float32_under_half_input_and_teacher_needing_gradients(rows):
    z0, teacher_logits, target, _ = rows
    teacher = TeacherParts(torch.softmax(teacher_logits, -1).float())
    out = distillation_rows(z0.half(), target, teacher, weights=LossWeights(0.5, 0.5),
                            ignore_index=IGNORE)
    assert out.loss.dtype == torch.float32
    with pytest.raises(ValueError, match="teacher: must not require gradients"):
        distillation_rows(z0, target, TeacherParts(teacher.probs.double().requires_grad_(True)))
    with pytest.raises(ValueError, match="target: must be given when teacher is None"):
        distillation_rows(z0)
