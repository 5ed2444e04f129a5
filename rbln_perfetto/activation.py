def begin_pipeline_call(info):
    return None
