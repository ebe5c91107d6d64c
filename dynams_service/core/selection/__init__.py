"""Selection math: scores and margins, the hard cut and its rules, the policy's plan,
distributed (exact, histogram-based) selection and the per-rank split."""
