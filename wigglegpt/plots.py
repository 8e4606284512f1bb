"""
Figures as PNG files through matplotlib, imported on first use (it is slow to import and only
the plotting commands need it) on the Agg backend, which draws to files and needs no display.
"""


def pyplot():
    """matplotlib.pyplot, on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path, dpi=100):
    """Write fig to path (PNG) and free it."""
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
