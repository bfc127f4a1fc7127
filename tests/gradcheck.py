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


def check_model(model, ids, targets, rng, max_count=12):
    """Gradient check of a whole model's loss(ids, targets) over every parameter, with its dropout generator rewound
    before every evaluation so that all of them use the same masks. Returns name -> relative error."""
    state = model.rng.bit_generator.state

    def loss():
        model.rng.bit_generator.state = state
        return model.loss(ids, targets)

    loss()
    analytic = {name: grad.copy() for name, grad in model.backward().items()}
    return check_gradients(loss, analytic, model.parameters(), rng, max_count=max_count)


def check_layer(layer, x, rng, dropout_rng=None, max_count=40):
    """Gradient check of a layer with forward(x) / backward(dout) against L = sum(forward(x) * W)
    for a fixed random W, over the input and every parameter (its sub-modules' included).

    dropout_rng: the Generator the layer's dropout draws from, rewound before every forward pass so
    that every evaluation uses the same masks. Returns name -> relative error.
    """
    state = None if dropout_rng is None else dropout_rng.bit_generator.state

    def forward():
        if state is not None:
            dropout_rng.bit_generator.state = state
        return layer.forward(x)

    weights = rng.standard_normal(forward().shape)
    layer.zero_grad()
    forward()
    analytic = {"input": layer.backward(weights), **{name: grad.copy() for name, grad in layer.gradients().items()}}
    return check_gradients(lambda: float(np.sum(forward() * weights)), analytic,
                           {"input": x, **layer.parameters()}, rng, max_count)
