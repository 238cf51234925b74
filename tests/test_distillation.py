"""Distillation math in ls_plugins.losses (paper section 4): exact values against references."""
import math

import pytest
import torch

from ls_plugins.losses import (TopKTeacher, distillation_loss, distillation_terms,
                               ensemble_tempered_log_probs, equivalent_smoothing, incorrect_mass,
                               smoothed_cross_entropy, soft_cross_entropy, tempered_log_probs,
                               tempered_probs, topk_log_probs, topk_teacher,
                               topk_teacher_from_log_probs)

PAD = 1
K = 7


def _softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    s = sum(e)
    return [v / s for v in e]


def reference_distillation(student, teacher, target, *, alpha, beta, temperature, t2=False,
                           ignore_index=PAD):
    """(1-beta) H(y(1-a)+a/K, p) + beta s H(q(T), p(T)), summed over non-pad positions,
    written out with explicit softmaxes and sums in Python floats."""
    total = 0.0
    n_classes = student.size(-1)
    for z_s, z_t, y in zip(student.reshape(-1, n_classes).tolist(),
                           teacher.reshape(-1, n_classes).tolist(), target.reshape(-1).tolist()):
        if y == ignore_index:
            continue
        p = _softmax(z_s)
        p_t = _softmax([v / temperature for v in z_s])
        q_t = _softmax([v / temperature for v in z_t])
        y_ls = [(1 - alpha) * (k == y) + alpha / n_classes for k in range(n_classes)]
        hard = -sum(y_ls[k] * math.log(p[k]) for k in range(n_classes))
        soft = -sum(q_t[k] * math.log(p_t[k]) for k in range(n_classes))
        total += (1 - beta) * hard + beta * (temperature ** 2 if t2 else 1.0) * soft
    return total


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, K, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(3, 5, K, generator=g, dtype=torch.float64) * 3
    target = torch.randint(2, K, (3, 5), generator=g)
    target[0, 3:] = PAD
    target[2, 1:] = PAD
    return student, teacher, target


@pytest.mark.parametrize("alpha,beta,temperature,t2", [
    (0.0, 0.5, 1.0, False), (0.1, 0.5, 2.0, False), (0.2, 1.0, 4.0, False),
    (0.0, 0.3, 0.5, False), (0.1, 0.7, 3.0, True), (0.3, 0.0, 2.0, True)])
def test_distillation_loss_matches_hand_written_reference(batch, alpha, beta, temperature, t2):
    student, teacher, target = batch
    got = distillation_loss(student, teacher, target, beta=beta, temperature=temperature,
                            alpha=alpha, ignore_index=PAD, scale_by_t2=t2)
    want = reference_distillation(student, teacher, target, alpha=alpha, beta=beta,
                                  temperature=temperature, t2=t2)
    assert got.item() == pytest.approx(want, rel=1e-12)
    # mean = sum / non-pad positions; none keeps the shape with zeros at pads
    mean = distillation_loss(student, teacher, target, beta=beta, temperature=temperature,
                             alpha=alpha, ignore_index=PAD, scale_by_t2=t2, reduction="mean")
    assert mean.item() == pytest.approx(want / int(target.ne(PAD).sum()), rel=1e-12)
    per = distillation_loss(student, teacher, target, beta=beta, temperature=temperature,
                            alpha=alpha, ignore_index=PAD, scale_by_t2=t2, reduction="none")
    assert per.shape == target.shape and per[target.eq(PAD)].abs().max() == 0
    assert per.sum().item() == pytest.approx(want, rel=1e-12)


def test_float32_and_half_inputs_match_float64(batch):
    student, teacher, target = batch
    want = distillation_loss(student, teacher, target, beta=0.5, temperature=2.0, ignore_index=PAD)
    got = distillation_loss(student.float(), teacher.half(), target, beta=0.5, temperature=2.0,
                            ignore_index=PAD)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-3)


def test_beta_zero_is_smoothed_cross_entropy(batch):
    student, teacher, target = (x.float() if x.is_floating_point() else x for x in batch)
    for alpha in (0.0, 0.1, 0.4):
        got = distillation_loss(student, teacher, target, beta=0.0, temperature=3.0, alpha=alpha,
                                ignore_index=PAD)
        want = smoothed_cross_entropy(student, target, alpha, ignore_index=PAD)
        assert torch.equal(got, want)


def test_beta_one_student_equal_to_teacher_gives_teacher_entropy(batch):
    _, teacher, target = batch
    got = distillation_loss(teacher, teacher, target, beta=1.0, temperature=1.0, ignore_index=PAD)
    p = torch.softmax(teacher, -1)
    entropy = -(p * p.log()).sum(-1)
    assert got.item() == pytest.approx(entropy[target.ne(PAD)].sum().item(), rel=1e-12)


def test_terms_split_the_loss(batch):
    student, teacher, target = batch
    loss, nll, soft = distillation_terms(student, teacher, target, beta=0.25, temperature=2.0,
                                         ignore_index=PAD, scale_by_t2=True)
    log_p_y = torch.log_softmax(student, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    assert nll.item() == pytest.approx(-log_p_y[target.ne(PAD)].sum().item(), rel=1e-12)
    want_soft = soft_cross_entropy(student, tempered_probs(teacher, 2.0), 2.0)[target.ne(PAD)].sum()
    assert soft.item() == pytest.approx(want_soft.item(), rel=1e-12)
    assert loss.item() == pytest.approx(0.75 * nll.item() + 0.25 * 4.0 * soft.item(), rel=1e-12)
    # log-probabilities passed instead of logits give the same terms (they are logits too)
    lprobs = torch.log_softmax(student, -1)
    again = distillation_terms(None, teacher, target, beta=0.25, temperature=2.0,
                               ignore_index=PAD, scale_by_t2=True, student_lprobs=lprobs)
    for a, b in zip(again, (loss, nll, soft)):
        assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_soft_term_gradient_is_p_minus_q_over_t(batch):
    student, teacher, target = batch
    z = student.clone().requires_grad_(True)
    temperature = 2.5
    q = tempered_probs(teacher, temperature)
    soft_cross_entropy(z, q, temperature).sum().backward()
    assert torch.allclose(z.grad, (torch.softmax(student / temperature, -1) - q) / temperature,
                          atol=1e-12)


def test_equivalent_smoothing_of_label_smoothed_and_one_hot_teachers():
    target = torch.tensor([[3, 0, 6, PAD], [2, 2, PAD, PAD]])
    for alpha in (0.0, 0.1, 0.35, 0.9):
        probs = torch.full((2, 4, K), alpha / K, dtype=torch.float64)
        probs.scatter_add_(-1, target.unsqueeze(-1), torch.full((2, 4, 1), 1 - alpha,
                                                                  dtype=torch.float64))
        assert equivalent_smoothing(probs.log(), target, ignore_index=PAD) == pytest.approx(alpha, abs=1e-12)
    one_hot = torch.full((2, 4, K), -1e9, dtype=torch.float64).scatter(
        -1, target.unsqueeze(-1), 0.0)
    assert equivalent_smoothing(one_hot, target, ignore_index=PAD) == 0.0
    # temperature flattens a teacher that is right: gamma grows towards (K-1)/K * K/(K-1) = 1
    logits = torch.randn(2, 4, K, dtype=torch.float64).scatter_add(
        -1, target.unsqueeze(-1), torch.full((2, 4, 1), 4.0, dtype=torch.float64))
    gammas = [equivalent_smoothing(logits, target, t, ignore_index=PAD) for t in (0.5, 1, 2, 1e4)]
    assert gammas == sorted(gammas) and gammas[-1] == pytest.approx(1.0, abs=0.01)


def test_incorrect_mass_is_summable(batch):
    _, teacher, target = batch
    q = tempered_probs(teacher, 2.0)
    total, count = incorrect_mass(q, target, PAD)
    first = incorrect_mass(q[:1], target[:1], PAD)
    rest = incorrect_mass(q[1:], target[1:], PAD)
    assert count == first[1] + rest[1] == int(target.ne(PAD).sum())
    assert total == pytest.approx(first[0] + rest[0], rel=1e-12)
    assert total / count == pytest.approx(equivalent_smoothing(teacher, target, 2.0, PAD), rel=1e-12)


def test_ensemble_log_probs_average_tempered_probabilities(batch):
    student, teacher, _ = batch
    got = ensemble_tempered_log_probs([student, teacher], 2.0)
    want = ((tempered_probs(student, 2.0) + tempered_probs(teacher, 2.0)) / 2).log()
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(ensemble_tempered_log_probs([teacher], 3.0), tempered_log_probs(teacher, 3.0))


# ---------------------------------------------------------------------------------------------
# top-k teachers (the cache)
# ---------------------------------------------------------------------------------------------

def dense(teacher: TopKTeacher) -> torch.Tensor:
    """The full K-way distribution a TopKTeacher stands for."""
    shape = teacher.probs.shape[:-1] + (teacher.num_classes,)
    tail = teacher.tail if teacher.tail is not None else torch.zeros(shape[:-1], dtype=teacher.probs.dtype)
    out = tail.unsqueeze(-1).expand(shape).clone()
    return out.scatter(-1, teacher.indices, teacher.probs)


@pytest.mark.parametrize("temperature,source", [(1.0, 1.0), (2.0, 1.0), (0.5, 2.0), (3.0, 3.0)])
def test_full_topk_is_exact_at_any_temperature(batch, temperature, source):
    _, teacher, _ = batch
    cached = topk_log_probs(tempered_log_probs(teacher, source), K)
    assert torch.isneginf(cached[2]).all()
    rebuilt = topk_teacher_from_log_probs(*cached[:2], K, temperature=temperature,
                                          source_temperature=source, tail_log_mass=cached[2])
    assert rebuilt.tail is None
    assert torch.allclose(dense(rebuilt), tempered_probs(teacher, temperature), atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_truncated_teacher_keeps_exact_top_k_and_tail_mass_at_cache_temperature(batch, k):
    _, teacher, _ = batch
    lp = tempered_log_probs(teacher, 2.0)
    values, indices, tail = topk_log_probs(lp, k)
    p = lp.exp()
    assert torch.allclose(tail.exp(), p.sum(-1) - values.exp().sum(-1), atol=1e-12)
    uniform = topk_teacher_from_log_probs(values, indices, K, temperature=2.0,
                                          source_temperature=2.0, tail_log_mass=tail)
    assert torch.allclose(uniform.probs, values.exp(), atol=1e-12)          # kept: exact
    assert torch.allclose(uniform.tail * (K - k), tail.exp(), atol=1e-12)   # tail: its total mass
    assert torch.allclose(dense(uniform).sum(-1), torch.ones(3, 5, dtype=torch.float64))
    dropped = topk_teacher_from_log_probs(values, indices, K, temperature=2.0,
                                          source_temperature=2.0, tail_log_mass=tail, tail="drop")
    assert dropped.tail is None
    assert torch.allclose(dropped.probs, values.exp() / values.exp().sum(-1, keepdim=True))
    # the same function serves live truncation: a cache at T_c = T and a live teacher agree
    live = topk_teacher(lp, k)
    for a, b in zip(live[:3], uniform[:3]):
        assert torch.equal(a, b)
    # the tail is derived from the kept log-probabilities when not stored
    derived = topk_teacher_from_log_probs(values, indices, K, temperature=2.0, source_temperature=2.0)
    assert torch.allclose(derived.tail, uniform.tail, atol=1e-9)
    # keep=j of a top-k cache equals a top-j cache
    if k > 1:
        folded = topk_teacher_from_log_probs(values, indices, K, temperature=2.0,
                                             source_temperature=2.0, tail_log_mass=tail, keep=k - 1)
        direct = topk_teacher(lp, k - 1)
        assert torch.allclose(folded.probs, direct.probs, atol=1e-12)
        assert torch.allclose(folded.tail, direct.tail, atol=1e-12)


def test_uniform_tail_under_another_temperature(batch):
    """At T != T_c the kept classes keep their tempered ratios and the tail is one even logit."""
    _, teacher, _ = batch
    k, t_c, t = 3, 1.0, 2.0
    values, indices, tail = topk_log_probs(tempered_log_probs(teacher, t_c), k)
    got = topk_teacher_from_log_probs(values, indices, K, temperature=t, source_temperature=t_c,
                                      tail_log_mass=tail)
    tail_logit = tail - math.log(K - k)
    logits = torch.cat([values, tail_logit.unsqueeze(-1).expand(3, 5, K - k)], -1) / t
    want = torch.softmax(logits, -1)
    assert torch.allclose(got.probs, want[..., :k], atol=1e-12)
    assert torch.allclose(got.tail, want[..., k], atol=1e-12)
    # ratios among kept classes are exactly those of the full teacher at T
    full = tempered_probs(teacher, t).gather(-1, indices)
    assert torch.allclose(got.probs / got.probs[..., :1], full / full[..., :1], atol=1e-12)


@pytest.mark.parametrize("tail", ["uniform", "drop"])
def test_sparse_soft_term_and_gamma_equal_dense_ones(batch, tail):
    student, teacher, target = batch
    top = topk_teacher(tempered_log_probs(teacher, 2.0), 3, tail=tail)
    full = dense(top)
    z = student.clone().requires_grad_(True)
    z_dense = student.clone().requires_grad_(True)
    sparse_soft = soft_cross_entropy(z, top, 2.0)
    dense_soft = soft_cross_entropy(z_dense, full, 2.0)
    assert torch.allclose(sparse_soft, dense_soft, atol=1e-12)
    sparse_soft.sum().backward()
    dense_soft.sum().backward()
    assert torch.allclose(z.grad, z_dense.grad, atol=1e-12)
    a = incorrect_mass(top, target, PAD)
    b = incorrect_mass(full, target, PAD)
    assert a[1] == b[1] and a[0] == pytest.approx(b[0], rel=1e-12)
    got = distillation_loss(student, None, target, beta=0.6, temperature=2.0, alpha=0.1,
                            ignore_index=PAD, teacher_probs=top)
    want = distillation_loss(student, None, target, beta=0.6, temperature=2.0, alpha=0.1,
                             ignore_index=PAD, teacher_probs=full)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    ({"beta": 1.5}, "beta"), ({"beta": -0.1}, "beta"), ({"beta": float("nan")}, "beta"),
    ({"beta": 0.5, "temperature": 0.0}, "temperature"),
    ({"beta": 0.5, "temperature": -2.0}, "temperature"),
    ({"beta": 0.5, "alpha": 1.0}, "alpha")])
def test_bad_arguments_are_refused(batch, kwargs, match):
    student, teacher, target = batch
    with pytest.raises(ValueError, match=match):
        distillation_loss(student, teacher, target, **kwargs)


def test_bad_top_k_is_refused(batch):
    _, teacher, _ = batch
    for k in (0, K + 1):
        with pytest.raises(ValueError, match="k"):
            topk_teacher(teacher.log_softmax(-1), k)
    with pytest.raises(ValueError, match="tail"):
        topk_teacher(teacher.log_softmax(-1), 2, tail="spread")


@pytest.mark.parametrize("temperature", [1.0, 0.7, 3.0])
@pytest.mark.parametrize("kind", ["dense", "uniform", "drop", "all"])
def test_fused_soft_term_equals_autograd_reference(batch, temperature, kind):
    """The soft term's hand-written backward ((m p(T) - q)/T) against plain autograd."""
    from ls_plugins.losses import _soft_ce_reference
    student, teacher, _ = batch
    lp = tempered_log_probs(teacher, temperature)
    q = {"dense": lp.exp(), "uniform": topk_teacher(lp, 3), "drop": topk_teacher(lp, 3, tail="drop"),
         "all": topk_teacher(lp, K)}[kind]
    z1 = student.clone().requires_grad_(True)
    z2 = student.clone().requires_grad_(True)
    weights = torch.rand(student.shape[:-1], dtype=torch.float64)
    fused = soft_cross_entropy(z1, q, temperature)
    reference = _soft_ce_reference(z2, temperature, q)
    assert torch.allclose(fused, reference, atol=1e-12)
    (fused * weights).sum().backward()
    (reference * weights).sum().backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-12)
    small = student[:1, :2].clone().requires_grad_(True)
    q_small = q[:1, :2] if kind == "dense" else TopKTeacher(
        q.probs[:1, :2], q.indices[:1, :2], None if q.tail is None else q.tail[:1, :2], K)
    assert torch.autograd.gradcheck(lambda x: soft_cross_entropy(x, q_small, temperature), (small,))


def test_teacher_that_needs_gradients_gets_them(batch):
    student, teacher, _ = batch
    t = teacher.clone().requires_grad_(True)
    soft_cross_entropy(student, tempered_probs(t, 2.0), 2.0).sum().backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_fused_soft_term_survives_a_second_backward(batch):
    """The backward reuses its forward buffer; retain_graph and a second backward still work."""
    from ls_plugins.losses import _soft_ce_reference
    student, teacher, _ = batch
    q = topk_teacher(tempered_log_probs(teacher, 2.0), 3)
    z = student.clone().requires_grad_(True)
    loss = soft_cross_entropy(z, q, 2.0).sum()
    loss.backward(retain_graph=True)
    first = z.grad.clone()
    loss.backward()
    z_ref = student.clone().requires_grad_(True)
    _soft_ce_reference(z_ref, 2.0, q).sum().backward()
    assert torch.allclose(first, z_ref.grad, atol=1e-12)
    assert torch.allclose(z.grad, 2 * z_ref.grad, atol=1e-12)


def _forced_reference(teacher):
    """The same teacher, marked as needing gradients: distillation_terms then uses autograd."""
    if isinstance(teacher, TopKTeacher):
        return TopKTeacher(teacher.probs.clone().requires_grad_(True), teacher.indices,
                           teacher.tail, teacher.num_classes)
    return teacher.clone().requires_grad_(True)


@pytest.mark.parametrize("alpha,beta,temperature,t2", [
    (0.0, 0.5, 1.0, False), (0.1, 0.5, 2.0, True), (0.2, 1.0, 0.5, False), (0.1, 0.0, 3.0, False)])
@pytest.mark.parametrize("kind", ["dense", "uniform", "drop"])
@pytest.mark.parametrize("given", ["logits", "lprobs"])
def test_fused_distillation_gradient_equals_autograd(batch, alpha, beta, temperature, t2, kind, given):
    student, teacher, target = batch
    lp = tempered_log_probs(teacher, temperature)
    q = {"dense": lp.exp(), "uniform": topk_teacher(lp, 3), "drop": topk_teacher(lp, 3, tail="drop")}[kind]
    results = []
    for teacher_probs in (q, _forced_reference(q)):
        z = student.clone().requires_grad_(True)
        inputs = ({"student_logits": z} if given == "logits"
                  else {"student_logits": None, "student_lprobs": torch.log_softmax(z, -1)})
        loss, nll, soft = distillation_terms(target=target, teacher_logits=None, beta=beta,
                                             temperature=temperature, alpha=alpha,
                                             ignore_index=PAD, teacher_probs=teacher_probs,
                                             scale_by_t2=t2, **inputs)
        (loss + 0.3 * nll + 0.2 * soft).backward()
        results.append((loss.item(), nll.item(), soft.item(), z.grad))
    (fused, reference) = results
    for a, b in zip(fused[:3], reference[:3]):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12)
    assert torch.allclose(fused[3], reference[3], atol=1e-12)
    assert fused[3][target.eq(PAD)].abs().max() == 0  # padding gets no gradient


def test_fused_distillation_gradcheck(batch):
    student, teacher, target = batch
    q = topk_teacher(tempered_log_probs(teacher[:1, :3], 2.0), 3)
    z = student[:1, :3].clone().requires_grad_(True)
    y = target[:1, :3]
    assert torch.autograd.gradcheck(
        lambda x: distillation_terms(x, None, y, beta=0.4, temperature=2.0, alpha=0.1,
                                     ignore_index=PAD, teacher_probs=q, reduction="none"), (z,))


@pytest.mark.parametrize("kind", ["dense", "uniform"])
@pytest.mark.parametrize("ignore_index", [-100, K + 3, PAD])
def test_ignore_index_outside_the_classes(batch, kind, ignore_index):
    """ignore_index=-100 (PyTorch's and Hugging Face's convention) or >= K: values and gradients
    equal plain autograd (torch's cross entropy + the soft term written out), ignored rows get 0."""
    student, teacher, target = batch
    target = target.masked_fill(target.eq(PAD), ignore_index)
    keep = target.ne(ignore_index)
    lp = tempered_log_probs(teacher, 2.0)
    q = lp.exp() if kind == "dense" else topk_teacher(lp, 3)
    q_dense = q if kind == "dense" else dense(q)
    z = student.clone().requires_grad_(True)
    loss, nll, soft = distillation_terms(z, None, target, beta=0.4, temperature=2.0, alpha=0.1,
                                         ignore_index=ignore_index, teacher_probs=q)
    (loss + 0.3 * nll + 0.2 * soft).backward()
    z_ref = student.clone().requires_grad_(True)
    flat = z_ref.reshape(-1, K)
    ref_hard = torch.nn.functional.cross_entropy(flat, target.reshape(-1), label_smoothing=0.1,
                                                 ignore_index=ignore_index, reduction="sum")
    ref_nll = torch.nn.functional.cross_entropy(flat, target.reshape(-1),
                                                ignore_index=ignore_index, reduction="sum")
    ref_soft = -(q_dense * torch.log_softmax(z_ref / 2.0, -1)).sum(-1)[keep].sum()
    ref_loss = 0.6 * ref_hard + 0.4 * ref_soft
    (ref_loss + 0.3 * ref_nll + 0.2 * ref_soft).backward()
    for got, want in ((loss, ref_loss), (nll, ref_nll), (soft, ref_soft)):
        assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-12)
    assert z.grad[~keep].abs().max() == 0
    per = distillation_loss(student, None, target, beta=0.4, temperature=2.0, alpha=0.1,
                            ignore_index=ignore_index, teacher_probs=q, reduction="none")
    assert per[~keep].abs().max() == 0
