"""A tqdm bar over sampler steps, driven by the `progress` callback of `sampling.sample`."""
from __future__ import annotations

from score_sde import console


class StepBar:
  """One bar over the steps of `num_batches` sampler calls: pass the object as `progress=` and call
  `start_batch(k)` before batch k. Reuse one object across batches (the sampler compiles once per
  progress callable). Adaptive ODE solves report percent (100 per batch) instead of steps.
  """

  def __init__(self, num_batches: int, *, desc: str = "sampling", disable: bool = False):
    self.bar = console.progress_bar(desc=desc, unit="step", disable=disable)
    self.num_batches = num_batches
    self.batch = 0

  def start_batch(self, batch: int) -> None:
    self.batch = batch

  def __call__(self, steps_done: int, steps_total: int) -> None:
    if self.bar.total is None:
      self.bar.total = self.num_batches * steps_total
      self.bar.refresh()
    position = self.batch * steps_total + steps_done
    if position > self.bar.n:  # callbacks may arrive out of order
      self.bar.update(position - self.bar.n)

  def close(self) -> None:
    self.bar.close()
