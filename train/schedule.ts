/**
 * Learning-rate schedules as BasicSR defines them (`basicsr/models/lr_scheduler.py`). BasicSR
 * steps its schedulers before every iteration but the first, so iteration k (1-based) trains with
 * the rate at `last_epoch = k - 1`: here `lrAt(done)` takes the number of finished steps.
 * @module
 */

/** BasicSR's CosineAnnealingRestartLR. */
export interface CosineRestartSchedule {
  type: "CosineAnnealingRestartLR";
  periods: number[];
  restartWeights?: number[];
  etaMin: number;
}

/** BasicSR's MultiStepRestartLR without restarts (= torch MultiStepLR). */
export interface MultiStepSchedule {
  type: "MultiStepLR";
  milestones: number[];
  gamma: number;
}

/** Either schedule. */
export type Schedule = CosineRestartSchedule | MultiStepSchedule;

/** The learning rate after `done` finished steps, from base rate `base`. */
export function lrAt(schedule: Schedule, base: number, done: number): number {
  if (schedule.type === "MultiStepLR") {
    const passed = schedule.milestones.filter((m) => m <= done).length;
    return base * Math.pow(schedule.gamma, passed);
  }
  const { periods, etaMin } = schedule;
  const weights = schedule.restartWeights ?? periods.map(() => 1);
  let start = 0;
  for (let i = 0; i < periods.length; i++) {
    // BasicSR's get_position_from_periods: the first period whose cumulative end is >= done
    if (done <= start + periods[i]) {
      const t = (done - start) / periods[i];
      return etaMin + weights[i] * 0.5 * (base - etaMin) * (1 + Math.cos(Math.PI * t));
    }
    start += periods[i];
  }
  throw new Error(`step ${done} lies past the schedule's periods (${start} steps in all)`);
}
