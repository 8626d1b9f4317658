"""From a folder of X-rays to Ray Datasets: manifest, split audit, data report, presets, the Ray Data pipeline."""
