import numpy as np
import pytest

from mnist_lenet_spark.nn.optim import sgd_nesterov


def test_two_steps_against_hand_worked_values():
    w = np.array([1.0, -2.0])
    state = sgd_nesterov.init(w)
    # step 1: v = 0.9*0 - 0.1*g = -0.1*g; w = w - 0.9*0 + 1.9*v
    g = np.array([0.5, 1.0])
    w1, s1 = sgd_nesterov.update(w, g, state, lr=0.1, momentum=0.9)
    assert np.allclose(s1.velocity, [-0.05, -0.1])
    assert np.allclose(w1, [1.0 - 1.9 * 0.05, -2.0 - 1.9 * 0.1])
    # step 2: v2 = 0.9*v1 - 0.1*g2; w2 = w1 - 0.9*v1 + 1.9*v2
    g2 = np.array([-1.0, 0.0])
    w2, s2 = sgd_nesterov.update(w1, g2, s1, lr=0.1, momentum=0.9)
    v2 = np.array([0.9 * -0.05 + 0.1, 0.9 * -0.1])
    assert np.allclose(s2.velocity, v2)
    assert np.allclose(w2, w1 - 0.9 * np.array([-0.05, -0.1]) + 1.9 * v2)


def test_update_is_pure_and_keeps_dtype():
    w = np.ones(3, np.float32)
    state = sgd_nesterov.init(w)
    w_next, s = sgd_nesterov.update(w, np.ones(3, np.float32), state, lr=0.5, momentum=0.9)
    assert np.array_equal(w, np.ones(3)) and np.array_equal(state.velocity, np.zeros(3))
    assert w_next.dtype == np.float32 and s.velocity.dtype == np.float32


def test_zero_momentum_is_plain_sgd():
    w = np.array([2.0])
    w1, _ = sgd_nesterov.update(w, np.array([4.0]), sgd_nesterov.init(w), lr=0.25, momentum=0.0)
    assert w1[0] == pytest.approx(1.0)
