"""convfocus.evaluation"""
