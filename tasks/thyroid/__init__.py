"""Thyroid ultrasound task family (Salama et al.): phantom data, radiomics targets, heads, losses."""
