"""nvkmd-agent: desktop notifications for one user's session."""
