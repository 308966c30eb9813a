"""The edge side: verified over-the-air model updates for devices that run inference offline."""
