"""Regularization (class) pictures rendered by the base model (DESIGN §1 step 5).

    spec     what to render (prompt, negative, steps, guidance, size, seeds) and the deterministic file
             names and manifest that let an interrupted request continue where it stopped
    render   the base pipeline, loaded once, rendering batches with one seeded generator per picture
    store    the engine-side end of the job: the rendered pictures become "reg" rows with captions

The job itself is engine.jobs.reg; the API the bot and the CLI call is engine.reg_api.
"""
