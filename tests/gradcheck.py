"""Central finite differences, shared by every gradient test.

For a scalar loss L(theta), dL/dtheta_i ~ (L(theta_i + h) - L(theta_i - h)) / 2h with error O(h^2);
in float64 with h = 1e-6 that leaves relative errors around 1e-8, so a bound of 1e-6 separates a
correct backward from a wrong one by orders of magnitude.
"""
import numpy as np

STEP = 1e-6
RELATIVE_ERROR_BOUND = 1e-6


def relative_error(actual, expected):
    """Norm-wise ||actual - expected|| / max(||actual||, ||expected||), 0 when both are 0."""
    scale = max(np.linalg.norm(actual), np.linalg.norm(expected))
    return 0.0 if scale == 0.0 else float(np.linalg.norm(actual - expected) / scale)


def numerical_gradient(loss_fn, array, indices):
    """d loss_fn() / d array[index] for each index, by perturbing `array` in place."""
    grads = []
    for index in indices:
        original = array[index]
        array[index] = original + STEP
        loss_plus = loss_fn()
        array[index] = original - STEP
        loss_minus = loss_fn()
        array[index] = original
        grads.append((loss_plus - loss_minus) / (2 * STEP))
    return np.array(grads)


def sample_indices(shape, rng, max_count):
    """Every index of a small array, or max_count distinct random ones of a large array."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= max_count else rng.choice(size, max_count, replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def check_gradients(loss_fn, analytic, arrays, rng, max_count=40):
    """Compare analytic gradients with finite differences.

    loss_fn: () -> float, evaluated on the current contents of `arrays`.
    analytic: name -> analytic gradient; arrays: name -> the live array it differentiates.
    Returns name -> relative error over the sampled entries.
    """
    errors = {}
    for name, array in arrays.items():
        indices = sample_indices(array.shape, rng, max_count)
        numeric = numerical_gradient(loss_fn, array, indices)
        errors[name] = relative_error(np.array([analytic[name][i] for i in indices]), numeric)
    return errors


def check_layer(layer, x, rng, reset_randomness=None, max_count=40):
    """Gradient check of a layer with forward(x) / backward(dout) against L = sum(forward(x) * W)
    for a fixed random W, over the input and every parameter. Returns name -> relative error."""
    def loss_fn():
        if reset_randomness:
            reset_randomness()
        return float(np.sum(layer.forward(x) * weights))

    if reset_randomness:
        reset_randomness()
    weights = rng.standard_normal(layer.forward(x).shape)
    layer.zero_grad()
    if reset_randomness:
        reset_randomness()
    layer.forward(x)
    analytic = {"input": layer.backward(weights), **{name: grad.copy() for name, grad in layer.grads.items()}}
    return check_gradients(loss_fn, analytic, {"input": x, **layer.params}, rng, max_count)
