"""Recognition engines: what starts and stops a task. Chosen per stream by ``engine``."""
