"""Fit once before validation: the hook pair of anomalib's ``MemoryBankMixin`` for models that fit once per phase."""


class FitBeforeValidationMixin:
    """Run the model's pending :meth:`fit` at the first of ``on_validation_start`` and ``on_train_epoch_end``.

    Lightning validates at the end of an epoch *before* ``on_train_epoch_end``, so a fit the validation needs runs in
    whichever hook comes first and :attr:`fit_pending` turns the second call into a no-op. This is anomalib's
    ``MemoryBankMixin`` with the persistent ``_is_fitted`` flag replaced by the model's own :attr:`fit_pending`: a
    model trained in phases fits once at the end of several of them (one flag cannot say which), and a new buffer
    would change the state-dict keys of existing checkpoints. Mix it in before ``AnomalibModule``; subclasses that
    override a hook call ``super()``.
    """

    @property
    def fit_pending(self) -> bool:
        """Whether a fit is due before the next validation (e.g. the current phase ended without it)."""
        raise NotImplementedError

    def fit(self) -> None:
        """Fit what the current phase needs (memory banks, statistics)."""
        raise NotImplementedError

    def on_validation_start(self) -> None:
        """Fit before validating if a fit is pending."""
        super().on_validation_start()  # type: ignore[misc]
        if self.fit_pending:
            self.fit()

    def on_train_epoch_end(self) -> None:
        """Fit at the end of the epoch if no validation did it."""
        super().on_train_epoch_end()  # type: ignore[misc]
        if self.fit_pending:
            self.fit()
