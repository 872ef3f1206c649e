"""Training side: data stage, synthetic MRI phantoms, teacher/student models, distillation."""
